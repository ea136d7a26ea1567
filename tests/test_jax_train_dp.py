"""Issue 18 §5 data parallel: with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (two CPU devices), the
batch sharded on the mesh's data axis and the parameters replicated give the same losses as one device on the
same global batch (<= 1e-4 over 20 steps)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")
pytest.importorskip("orbax.checkpoint")

from clipzoo.datasets import write_shapes  # noqa: E402

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from clipzoo.train.jax import train_jax
    from clipzoo.train.jax.config import jax_from_mapping
    from clipzoo.train.jax.mesh import make_mesh
    data, out = sys.argv[1], sys.argv[2]
    tiny = {"image_model": {"depth": 1, "embed_dim": 32, "n_heads": 2, "patch_size": 8},
            "text_model": {"depth": 1, "embed_dim": 32, "n_heads": 2}, "proj_dim": 16}
    result = {"devices": jax.device_count(), "mesh": int(make_mesh().devices.size)}
    for n in (1, 2):
        losses = []
        cfg = jax_from_mapping({"train_path": data, "model_config": tiny, "image_size": 16, "context_len": 12,
                                "global_batch_size": 8, "learning_rate": 3e-3, "n_warmup_steps": 2, "steps": 20,
                                "output": f"{out}/d{n}", "progress": False, "devices": n, "workers": 1})
        train_jax(cfg, on_step=lambda s, r: losses.append(r["loss"]))
        result[n] = losses
    print(json.dumps(result))
""")


def test_jax_data_parallel_two_devices_equal_one_device(tmp_path):
    write_shapes(tmp_path / "data", 40, seed=5, image_size=16, formats=("csv",), two_object_prob=0.0)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "data"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2 and result["mesh"] == 2
    one, two = result["1"], result["2"]
    assert len(one) == len(two) == 20
    assert max(abs(a - b) for a, b in zip(one, two)) <= 1e-4
    assert one[-1] < one[0]  # the run learns: the comparison is not of constants
