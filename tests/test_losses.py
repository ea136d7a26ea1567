"""Training objectives vs independent, explicit (loop / formula) reference computations on small fixed tensors."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from clipzoo.errors import ClipzooError
from clipzoo.train.losses import LOSSES, FeatureQueue, LossInputError, UnknownLossError, build_loss
from clipzoo.train.losses.protoclip import spherical_kmeans

TOL = 1e-6
N, D = 5, 4


def _t(seed, n=N, d=D):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _norm_rows(m):
    out = []
    for r in m:
        s = math.sqrt(sum(v * v for v in r))
        out.append([v / s for v in r])
    return out


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _lse(vals):
    m = max(vals)
    return m + math.log(sum(math.exp(v - m) for v in vals))


def _softmax(vals):
    lse = _lse(vals)
    return [math.exp(v - lse) for v in vals]


def _huber(a, b, beta=1.0):
    d = abs(a - b)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def close(a, b, tol=TOL):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


# ------------------------------------------------------------------ contrastive


def test_infonce_matches_loops():
    x, y = F.normalize(_t(0), dim=1), F.normalize(_t(1), dim=1)
    s = 7.5
    out = build_loss("infonce")(x, y, logit_scale=torch.tensor(s, dtype=torch.float64))
    X, Y = x.tolist(), y.tolist()
    li = sum(-(s * _dot(X[i], Y[i]) - _lse([s * _dot(X[i], Y[j]) for j in range(N)])) for i in range(N)) / N
    lt = sum(-(s * _dot(Y[i], X[i]) - _lse([s * _dot(Y[i], X[j]) for j in range(N)])) for i in range(N)) / N
    assert close(out["loss_image"], li) and close(out["loss_text"], lt)
    assert close(out["loss"], (li + lt) / 2)


def test_infonce_learnable_scale_and_missing_scale():
    x, y = _t(0), _t(1)
    with pytest.raises(LossInputError, match="logit_scale"):
        build_loss("infonce")(x, y)
    loss = build_loss("infonce", learn_logit_scale=True).double()
    out = loss(x, y)
    assert close(out["logit_scale"], 1 / 0.07)
    out["loss"].backward()
    assert torch.isfinite(loss.log_logit_scale.grad)


def test_siglip_matches_loops():
    x, y = F.normalize(_t(2), dim=1), F.normalize(_t(3), dim=1)
    s, b = 10.0, -3.0
    out = build_loss("siglip")(x, y, logit_scale=torch.tensor(s), logit_bias=torch.tensor(b))
    X, Y = x.tolist(), y.tolist()
    ref = 0.0
    for i in range(N):
        for j in range(N):
            z = 1.0 if i == j else -1.0
            logit = s * _dot(X[i], Y[j]) + b
            ref += math.log1p(math.exp(-z * logit))  # -log sigmoid(z*logit)
    assert close(out["loss"], ref / N)


def test_siglip_learnable_init_as_paper():
    loss = build_loss("siglip", learn_logit_scale=True)
    out = loss(_t(2).float(), _t(3).float())
    assert close(out["logit_scale"], 10.0) and close(out["logit_bias"], -10.0)


# ------------------------------------------------------------------ regression / redundancy reduction


def test_simreg_variants_match_loops():
    s, t = _t(4), _t(5)
    S, T = _norm_rows(s.tolist()), _norm_rows(t.tolist())
    l2 = sum(sum((a - b) ** 2 for a, b in zip(S[i], T[i])) for i in range(N)) / N
    cos = sum(_dot(S[i], T[i]) for i in range(N)) / N
    l1 = sum(abs(a - b) for i in range(N) for a, b in zip(S[i], T[i])) / (N * D)
    sl1 = sum(_huber(a, b) for i in range(N) for a, b in zip(S[i], T[i])) / (N * D)
    assert close(build_loss("simreg")(s, teacher_image_features=t)["loss"], l2)
    assert close(l2, 2 - 2 * cos)
    assert close(build_loss("simreg-l1")(s, teacher_image_features=t)["loss"], l1)
    assert close(build_loss("simreg-smoothl1")(s, teacher_image_features=t)["loss"], sl1)
    # both modalities -> mean, per-pair components
    out = build_loss("simreg")(s, s, teacher_image_features=t, teacher_text_features=s)
    assert close(out["loss"], l2 / 2) and close(out["loss_text"], 0.0)
    # aligned -> 0 (scale invariant)
    assert close(build_loss("simreg")(3 * t, teacher_image_features=t)["loss"], 0.0)


def _vicreg_ref(X, Y, sim=25.0, std=25.0, cov=1.0, eps=1e-4):
    n, d = len(X), len(X[0])
    inv = sum((X[i][k] - Y[i][k]) ** 2 for i in range(n) for k in range(d)) / (n * d)

    def stats(Z):
        mu = [sum(Z[i][k] for i in range(n)) / n for k in range(d)]
        C = [[sum((Z[i][a] - mu[a]) * (Z[i][b] - mu[b]) for i in range(n)) / (n - 1) for b in range(d)]
             for a in range(d)]
        v = sum(max(0.0, 1 - math.sqrt(C[k][k] + eps)) for k in range(d)) / d
        c = sum(C[a][b] ** 2 for a in range(d) for b in range(d) if a != b) / d
        return v, c

    vx, cx = stats(X)
    vy, cy = stats(Y)
    return sim * inv + std * (vx + vy) / 2 + cov * (cx + cy), inv


def test_vicreg_matches_formula():
    x, y = 0.5 * _t(6), 0.5 * _t(7)
    out = build_loss("vicreg")(x, teacher_image_features=y)
    ref, inv = _vicreg_ref(x.tolist(), y.tolist())
    assert close(out["loss"], ref) and close(out["invariance"], inv)
    # no teacher: image-text pair
    out2 = build_loss("vicreg")(x, y)
    assert close(out2["loss"], ref)
    # aligned -> invariance exactly 0
    assert float(build_loss("vicreg")(x, teacher_image_features=x)["invariance"]) == 0.0


def _bt_ref(X, Y, lambd=5e-3, eps=1e-5):
    n, d = len(X), len(X[0])

    def std(Z):
        mu = [sum(Z[i][k] for i in range(n)) / n for k in range(d)]
        sd = [math.sqrt(sum((Z[i][k] - mu[k]) ** 2 for i in range(n)) / n + eps) for k in range(d)]
        return [[(Z[i][k] - mu[k]) / sd[k] for k in range(d)] for i in range(n)]

    A, B = std(X), std(Y)
    C = [[sum(A[i][a] * B[i][b] for i in range(n)) / n for b in range(d)] for a in range(d)]
    return sum((1 - C[k][k]) ** 2 for k in range(d)) + lambd * sum(
        C[a][b] ** 2 for a in range(d) for b in range(d) if a != b)


def test_barlow_twins_matches_formula_and_identity_minimum():
    x, y = _t(8), _t(9)
    assert close(build_loss("barlow-twins")(x, teacher_image_features=y)["loss"], _bt_ref(x.tolist(), y.tolist()))
    # columns of a Hadamard matrix: zero-mean, uncorrelated, unit variance -> C = I/(1+eps)
    h = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:5]
    out = build_loss("barlow-twins")(z, teacher_image_features=z)
    assert float(out["off_diagonal"]) < 1e-20 and float(out["loss"]) < 1e-9


def test_rkd_matches_loops_and_aligned_zero():
    s, t = _t(10, d=3), _t(11, d=6)  # widths may differ
    S, T = s.tolist(), t.tolist()

    def dist(Z):
        dd = [[math.dist(Z[i], Z[j]) if i != j else 0.0 for j in range(N)] for i in range(N)]
        mu = sum(dd[i][j] for i in range(N) for j in range(N) if i != j) / (N * (N - 1))
        return [[v / mu for v in row] for row in dd]

    def angle(Z, i, j, k):
        def unit(a, b):
            v = [p - q for p, q in zip(a, b)]
            nrm = math.sqrt(sum(c * c for c in v))
            return [c / nrm for c in v] if nrm > 0 else [0.0] * len(v)
        # e^{ji}·e^{ki}, vectors from the centre i (matches the authors' (e[None]-e[:,None]) form)
        return _dot(unit(Z[j], Z[i]), unit(Z[k], Z[i]))

    ds, dt = dist(S), dist(T)
    ld = sum(_huber(ds[i][j], dt[i][j]) for i in range(N) for j in range(N)) / N ** 2
    la = sum(_huber(angle(S, i, j, k), angle(T, i, j, k))
             for i in range(N) for j in range(N) for k in range(N)) / N ** 3
    out = build_loss("rkd")(s, teacher_image_features=t)
    assert close(out["distance"], ld) and close(out["angle"], la)
    assert close(out["loss"], 25 * ld + 50 * la)
    aligned = build_loss("rkd")(2 * t, teacher_image_features=t)  # relations are scale invariant
    assert float(aligned["loss"]) < 1e-12


# ------------------------------------------------------------------ queue-based distillation


def test_feature_queue_fifo_and_wrap():
    q = FeatureQueue(5, 2)
    assert q.queue.shape == (5, 2) and torch.allclose(q.queue.norm(dim=1), torch.ones(5))
    a = torch.arange(6.0).view(3, 2)
    q.enqueue(a)
    assert int(q.ptr) == 3 and torch.equal(q.queue[:3], a)
    b = torch.arange(100.0, 106.0).view(3, 2)
    q.enqueue(b)  # rows 3,4 then wrap to 0
    assert int(q.ptr) == 1
    assert torch.equal(q.queue[3:5], b[:2]) and torch.equal(q.queue[0], b[2]) and torch.equal(q.queue[1:3], a[1:])
    c = torch.arange(200.0, 214.0).view(7, 2)  # longer than the queue: its last 5 rows, oldest at ptr
    q.enqueue(c)
    assert int(q.ptr) == 1
    assert torch.equal(q.queue[torch.tensor([1, 2, 3, 4, 0])], c[2:])
    assert {"queue.queue", "queue.ptr"} <= set(build_loss("seed", dim=2, queue_size=5).state_dict())


def _kl_ref(S, T, QS, QT, ts, tt):
    total = 0.0
    for i in range(len(S)):
        ls = [_dot(S[i], a) / ts for a in QS]
        lt = [_dot(T[i], a) / tt for a in QT]
        ps_log = [v - _lse(ls) for v in ls]
        pt = _softmax(lt)
        total += sum(p * (math.log(p) - q) for p, q in zip(pt, ps_log) if p > 0)
    return total / len(S)


def test_compress_1q_matches_loops_and_enqueues_teacher():
    s, t = _t(12), _t(13)
    loss = build_loss("compress-1q", dim=D, queue_size=7, teacher_temperature=0.1, student_temperature=0.2).double()
    Q = loss.queue.queue.tolist()
    out = loss(s, teacher_image_features=t)
    assert close(out["loss"], _kl_ref(_norm_rows(s.tolist()), _norm_rows(t.tolist()), Q, Q, 0.2, 0.1))
    assert torch.allclose(loss.queue.queue[:N], F.normalize(t, dim=1)) and int(loss.queue.ptr) == N


def test_compress_2q_matches_loops_and_enqueues_both():
    s, t = _t(14, d=3), _t(15, d=6)
    loss = build_loss("compress-2q", student_dim=3, teacher_dim=6, queue_size=8).double()
    QS, QT = loss.student_queue.queue.tolist(), loss.teacher_queue.queue.tolist()
    out = loss(s, teacher_image_features=t)
    assert close(out["loss"], _kl_ref(_norm_rows(s.tolist()), _norm_rows(t.tolist()), QS, QT, 0.04, 0.04), 1e-6)
    assert torch.allclose(loss.student_queue.queue[:N], F.normalize(s, dim=1))
    assert torch.allclose(loss.teacher_queue.queue[:N], F.normalize(t, dim=1))


def test_compress_1q_width_mismatch_is_an_error():
    with pytest.raises(LossInputError, match="widths must match"):
        build_loss("compress-1q", dim=4, queue_size=4)(_t(0, d=4), teacher_image_features=_t(1, d=6))


def test_seed_matches_loops():
    s, t = _t(16), _t(17)
    loss = build_loss("seed", dim=D, queue_size=6).double()
    Q = loss.queue.queue.tolist()
    S, T = _norm_rows(s.tolist()), _norm_rows(t.tolist())
    ref = 0.0
    for i in range(N):
        anchors = [T[i]] + Q
        pt = _softmax([_dot(T[i], a) / 0.01 for a in anchors])
        ls = [_dot(S[i], a) / 0.2 for a in anchors]
        ref += -sum(p * (q - _lse(ls)) for p, q in zip(pt, ls))
    out = loss(s, teacher_image_features=t)
    assert close(out["loss"], ref / N)
    # queue: teacher rows enqueued FIFO, pointer advanced and wrapped
    assert torch.allclose(loss.queue.queue[:N], F.normalize(t, dim=1)) and int(loss.queue.ptr) == N
    loss(s, teacher_image_features=2 * t)
    assert int(loss.queue.ptr) == (2 * N) % 6
    assert torch.allclose(loss.queue.queue[N], F.normalize(t, dim=1)[0])  # slot 5 <- first row of 2nd batch


# ------------------------------------------------------------------ self-distillation heads


def test_dino_matches_loops_and_center_ema():
    s, t = _t(18), _t(19)
    loss = build_loss("dino", dim=D).double()
    c0 = [0.3, -0.2, 0.1, 0.0]
    loss.center.copy_(torch.tensor([c0]))
    loss.teacher_temperature = 0.07  # the trainer's warm-up schedule sets it
    S, T = s.tolist(), t.tolist()
    ref = 0.0
    for i in range(N):
        pt = _softmax([(T[i][k] - c0[k]) / 0.07 for k in range(D)])
        ls = [v / 0.1 for v in S[i]]
        ref += -sum(p * (q - _lse(ls)) for p, q in zip(pt, ls))
    out = loss(s, teacher_image_features=t)
    assert close(out["loss"], ref / N) and close(out["teacher_temperature"], 0.07)
    mean = [sum(T[i][k] for i in range(N)) / N for k in range(D)]
    expect = [0.9 * c0[k] + 0.1 * mean[k] for k in range(D)]
    assert torch.allclose(loss.center[0], torch.tensor(expect, dtype=torch.float64), atol=1e-12)
    loss.eval()
    before = loss.center.clone()
    loss(s, teacher_image_features=t)
    assert torch.equal(loss.center, before)  # no EMA in eval mode
    assert "center" in loss.state_dict()


def test_protocpc_matches_loops():
    s, t = _t(20), _t(21)
    out = build_loss("protocpc")(s, teacher_image_features=t)
    S, T = s.tolist(), t.tolist()
    logp = [[v / 0.1 - _lse([u / 0.1 for u in S[i]]) for v in S[i]] for i in range(N)]
    log_marg = [math.log(sum(math.exp(logp[j][k]) for j in range(N)) / N) for k in range(D)]
    ref = 0.0
    for i in range(N):
        q = _softmax([v / 0.04 for v in T[i]])
        ref += -sum(q[k] * (logp[i][k] - log_marg[k]) for k in range(D))
    assert close(out["loss"], ref / N)


def test_spherical_kmeans_separates_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(3, dtype=torch.float64)
    x = torch.cat([centers[i] + 0.05 * torch.randn(4, 3, generator=g, dtype=torch.float64) for i in range(3)])
    cent, labels = spherical_kmeans(x, 3, seed=0)
    groups = [set(labels[i * 4:(i + 1) * 4].tolist()) for i in range(3)]
    assert all(len(gr) == 1 for gr in groups) and len(set.union(*groups)) == 3
    cent2, labels2 = spherical_kmeans(x, 3, seed=0)
    assert torch.equal(cent, cent2) and torch.equal(labels, labels2)


def test_protoclip_back_translation_and_loss():
    g = torch.Generator().manual_seed(1)
    base = torch.eye(4, dtype=torch.float64)
    img = F.normalize(torch.cat([base[i] + 0.05 * torch.randn(3, 4, generator=g, dtype=torch.float64)
                                 for i in (0, 1)]), dim=1)
    txt = F.normalize(torch.cat([base[i] + 0.05 * torch.randn(3, 4, generator=g, dtype=torch.float64)
                                 for i in (2, 3)]), dim=1)
    loss = build_loss("protoclip", num_prototypes=2, dim=4, proto_temperature=0.1).double()
    scale = torch.tensor(5.0, dtype=torch.float64)
    before = loss(img, txt, logit_scale=scale)
    assert float(before["prototype"]) == 0.0 and close(before["loss"], before["instance"])
    loss.update_prototypes(img, txt)
    assert int(loss.episode) == 1
    # back translation: image cluster prototypes live in text space (means of their pairs' text features)
    _, li = spherical_kmeans(img, 2, seed=0)
    for k in range(2):
        members = txt[li == k]
        expect = F.normalize(members.mean(0), dim=0)
        row = int((loss.image_centroids @ F.normalize(img[li == k].mean(0), dim=0)).argmax())
        assert torch.allclose(loss.image_protos_in_text[row], expect, atol=1e-12)
    # explicit prototype loss
    X, Y = img.tolist(), txt.tolist()
    CI, CT = loss.image_centroids.tolist(), loss.text_centroids.tolist()
    PIT, PTI = loss.image_protos_in_text.tolist(), loss.text_protos_in_image.tolist()
    l_i2t = l_t2i = 0.0
    for i in range(6):
        ai = max(range(2), key=lambda k: _dot(X[i], CI[k]))
        at = max(range(2), key=lambda k: _dot(Y[i], CT[k]))
        lt = [_dot(Y[i], p) / 0.1 for p in PIT]
        lx = [_dot(X[i], p) / 0.1 for p in PTI]
        l_i2t += -(lt[ai] - _lse(lt))
        l_t2i += -(lx[at] - _lse(lx))
    out = loss(img, txt, logit_scale=scale)
    assert close(out["prototype"], (l_i2t + l_t2i) / 12)
    assert close(out["loss"], float(out["instance"]) + float(out["prototype"]))
    assert {"image_centroids", "text_protos_in_image", "episode"} <= set(loss.state_dict())


# ------------------------------------------------------------------ generic properties

def _cases():
    """(name, kwargs, call(student_out, text_out) -> kwargs for the loss)"""
    t_img, _ = _t(30), _t(31)
    yield "infonce", {}, lambda s, y: dict(image_features=F.normalize(s, dim=1), text_features=F.normalize(y, dim=1),
                                             logit_scale=torch.tensor(10.0, dtype=torch.float64))
    yield "siglip", {}, lambda s, y: dict(image_features=F.normalize(s, dim=1), text_features=F.normalize(y, dim=1),
                                            logit_scale=torch.tensor(10.0, dtype=torch.float64),
                                            logit_bias=torch.tensor(-5.0, dtype=torch.float64))
    for name in ("simreg", "simreg-l1", "simreg-smoothl1", "vicreg", "barlow-twins", "rkd", "protocpc"):
        yield name, {}, lambda s, y: dict(image_features=s, teacher_image_features=t_img)
    yield "compress-1q", dict(dim=D, queue_size=16), lambda s, y: dict(image_features=s, teacher_image_features=t_img)
    yield "compress-2q", dict(student_dim=D, teacher_dim=D, queue_size=16), \
        lambda s, y: dict(image_features=s, teacher_image_features=t_img)
    yield "seed", dict(dim=D, queue_size=16), lambda s, y: dict(image_features=s, teacher_image_features=t_img)
    yield "dino", dict(dim=D), lambda s, y: dict(image_features=s, teacher_image_features=t_img)
    yield "protoclip", dict(num_prototypes=2, dim=D), \
        lambda s, y: dict(image_features=F.normalize(s, dim=1), text_features=F.normalize(y, dim=1),
                          logit_scale=torch.tensor(10.0, dtype=torch.float64))


def test_every_registered_loss_is_covered():
    assert {c[0] for c in _cases()} == set(LOSSES)


@pytest.mark.parametrize("name,kwargs,call", list(_cases()), ids=[c[0] for c in _cases()])
def test_one_sgd_step_lowers_loss_and_grads_finite(name, kwargs, call):
    torch.manual_seed(0)
    x, y = _t(40), _t(41)
    student = torch.nn.Linear(D, D, dtype=torch.float64)
    loss = build_loss(name, **kwargs).double()
    if name == "protoclip":
        loss.update_prototypes(student(x).detach(), y)
    state = copy.deepcopy(loss.state_dict())
    opt = torch.optim.SGD(student.parameters(), lr=1e-3)
    out = loss(**call(student(x), y))
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in student.parameters())
    opt.step()
    loss.load_state_dict(state)  # same queue / center as the first evaluation
    with torch.no_grad():
        after = loss(**call(student(x), y))["loss"]
    assert float(after) < float(out["loss"].detach())


def test_half_precision_inputs_reduce_in_fp32():
    x, y = _t(0).bfloat16(), _t(1).bfloat16()
    out = build_loss("infonce")(x, y, logit_scale=torch.tensor(10.0))
    assert out["loss"].dtype == torch.float32


def test_build_loss_unknown_name_suggests_nearest():
    with pytest.raises(UnknownLossError) as e:
        build_loss("vicreq")
    assert isinstance(e.value, ClipzooError) and "did you mean 'vicreg'?" in str(e.value).lower()
    with pytest.raises(UnknownLossError, match="simreg-l1"):
        build_loss("simreg_l2")
    assert type(build_loss("Barlow_Twins")).__name__ == "BarlowTwinsLoss"
    assert type(build_loss("clip")).__name__ == "InfoNCELoss"
    with pytest.raises(LossInputError, match="bad options"):
        build_loss("seed", nonsense=1)


def test_missing_teacher_is_a_clear_error():
    with pytest.raises(LossInputError, match="teacher_image_features"):
        build_loss("seed", dim=D, queue_size=4)(_t(0))
