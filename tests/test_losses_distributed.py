"""Two gloo processes vs one process on the concatenated global batch.

Scaling (open_clip semantics, documented in the loss modules): each rank back-propagates its own loss; the gradient
collectives (all-gather with grad / neighbour exchange) sum contributions from every rank, so the gradient on a
rank's local inputs is ``d(sum_r loss_r)/dx``. For InfoNCE with ``local_loss=False`` every rank's loss *is* the
global-batch loss; for ``local_loss=True``, SigLIP and per-sample losses (SEED) the *mean* over ranks is. In every
case with gradients through the gather, the local input gradient is ``world_size ×`` the global-batch gradient
(DDP's averaging over ranks divides it back). Without ``gather_with_grad`` (open_clip's default) only the local
slot carries gradient: exactly ``d(global loss)/d(local inputs)``.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipzoo.train.losses import build_loss

WORLD, N, D = 2, 8, 4
pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed gloo backend unavailable")


def _data():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1)
    t = torch.randn(N, D, generator=g, dtype=torch.float64)
    return x, y, t


SCALE = torch.tensor(6.0, dtype=torch.float64)
BIAS = torch.tensor(-2.0, dtype=torch.float64)

CASES = {
    "infonce_global_gwg": (dict(name="infonce", local_loss=False, gather_with_grad=True), "pair"),
    "infonce_local_gwg": (dict(name="infonce", local_loss=True, gather_with_grad=True), "pair"),
    "infonce_global_nograd": (dict(name="infonce", local_loss=False, gather_with_grad=False), "pair"),
    "siglip_exchange": (dict(name="siglip", dist_impl="exchange"), "pair"),
    "siglip_gather": (dict(name="siglip", dist_impl="gather"), "pair"),
    "seed": (dict(name="seed", dim=D, queue_size=12), "distill"),
    "compress-2q": (dict(name="compress-2q", student_dim=D, teacher_dim=D, queue_size=12), "distill"),
    "dino": (dict(name="dino", dim=D), "distill"),
}


def _run(case, x, y, t):
    """Build the loss, evaluate twice (state updates in between), return loss values, grads, state."""
    spec, kind = CASES[case]
    spec = dict(spec)
    loss = build_loss(spec.pop("name"), **spec).double()
    x = x.clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    if kind == "pair":
        out = loss(x, y, logit_scale=SCALE, logit_bias=BIAS if case.startswith("siglip") else None)
    else:
        out = loss(x, teacher_image_features=t)
    out["loss"].backward()
    if kind == "distill":  # a second step, so the queue / center state has advanced twice
        loss(x.detach() * 2, teacher_image_features=t * 2)
    return {"loss": out["loss"].detach(), "gx": x.grad, "gy": y.grad if y.grad is not None else torch.zeros_like(y),
            "state": {k: v.clone() for k, v in loss.state_dict().items()}}


def _proto_state(x, y):
    loss = build_loss("protoclip", num_prototypes=3, dim=D).double()
    loss.update_prototypes(x, y)
    return {k: v.clone() for k, v in loss.state_dict().items()}


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, y, t = _data()
        sl = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        results = {case: _run(case, x[sl], y[sl], t[sl]) for case in CASES}
        results["protoclip"] = _proto_state(x[sl], y[sl])
        results["all_gathers"] = _all_gathers_of_one_infonce_step(x[sl], y[sl])
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _all_gathers_of_one_infonce_step(x, y) -> dict[str, int]:
    """How many ``dist.all_gather`` calls one InfoNCE step makes, with and without ``gather_with_grad``."""
    real, calls = dist.all_gather, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    counts = {}
    dist.all_gather = counted
    try:
        for case in ("infonce_global_gwg", "infonce_global_nograd"):
            calls.clear()
            _run(case, x, y, x)
            counts[case] = len(calls)
    finally:
        dist.all_gather = real
    return counts


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    x, y, t = _data()
    res = {case: _run(case, x, y, t) for case in CASES}
    res["protoclip"] = _proto_state(x, y)
    return res


def _local(g, rank):
    return g[rank * N // WORLD:(rank + 1) * N // WORLD]


@pytest.mark.parametrize("case", list(CASES))
def test_two_process_loss_and_grads_equal_global_batch(ranks, single, case):
    ref = single[case]
    losses = [r[case]["loss"] for r in ranks]
    if case == "infonce_global_gwg" or case == "infonce_global_nograd":
        for rank_loss in losses:  # every rank computes the global-batch loss
            torch.testing.assert_close(rank_loss, ref["loss"], rtol=1e-10, atol=1e-12)
    else:
        torch.testing.assert_close(sum(losses) / WORLD, ref["loss"], rtol=1e-10, atol=1e-12)
    factor = 1.0 if case == "infonce_global_nograd" else float(WORLD)
    for r, res in enumerate(ranks):
        torch.testing.assert_close(res[case]["gx"], factor * _local(ref["gx"], r), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res[case]["gy"], factor * _local(ref["gy"], r), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", ["seed", "compress-2q", "dino", "protoclip"])
def test_state_identical_on_ranks_and_equal_to_single_process(ranks, single, case):
    get = (lambda d: d[case]) if case == "protoclip" else (lambda d: d[case]["state"])
    s0, s1, ref = get(ranks[0]), get(ranks[1]), get(single)
    assert s0.keys() == ref.keys()
    for k in ref:
        assert torch.equal(s0[k], s1[k]), k
        torch.testing.assert_close(s0[k], ref[k], rtol=1e-10, atol=1e-12)


def test_one_infonce_step_checks_both_features_shapes_in_one_collective(ranks):
    """The shape check of the image and the text features is one all-gather (it was one each, and an int() per
    number read synchronised the device each time): two gathers of features and one of shapes a step."""
    for res in ranks:
        assert res["all_gathers"] == {"infonce_global_gwg": 3, "infonce_global_nograd": 3}
