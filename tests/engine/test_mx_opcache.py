"""The disk cache of MXNet's generated operator functions (engine/core/mx_opcache.py): start-up of
every `brainseg segment` (issue #21). Each case is a fresh process, since mxnet imports once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys
from engine.core.mx_env import get_mx
from engine.core import mx_opcache
mx = get_mx()
import numpy as np
x = mx.nd.array(np.array([[-2.0, -0.5, 0.0, 1.5]], np.float32))
w = mx.nd.array(np.arange(18, dtype=np.float32).reshape(3, 2, 1, 3))
conv = mx.nd.Convolution(mx.nd.ones((1, 2, 4, 5)), w, kernel=(1, 3), num_filter=3, no_bias=True)
sym = mx.sym.sigmoid(mx.sym.relu(mx.sym.Variable("a")))
sentinel = [name for mod in (mx.nd.op, mx.sym.op, mx.nd._internal) for name, f in vars(mod).items()
            if callable(f) and mx_opcache.SENTINEL in getattr(getattr(f, "__code__", None), "co_consts", ())]
print(json.dumps({
    "stats": mx_opcache.LAST,
    "relu": mx.nd.relu(x).asnumpy().tolist(), "sigmoid": [[round(float(v), 4) for v in mx.nd.sigmoid(x).asnumpy()[0]]],
    "add": mx.nd.broadcast_add(x, mx.nd.ones((1, 1))).asnumpy().tolist(),
    "conv": conv.asnumpy().sum(axis=(2, 3)).tolist(),
    "sym_ops": [n["op"] for n in json.loads(sym.tojson())["nodes"]],
    "sentinel_left": sentinel,
}))
"""


def _run(cache: Path) -> dict:
    env = dict(os.environ, BRAINSEG_CACHE=str(cache), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


EXPECTED = {
    "relu": [[0.0, 0.0, 0.0, 1.5]],
    "sigmoid": [[0.1192, 0.3775, 0.5, 0.8176]],
    "add": [[-1.0, 0.5, 1.0, 2.5]],
    "sym_ops": ["null", "relu", "sigmoid"],
    "sentinel_left": [],
}


def _same_operators(res: dict, cold: dict) -> None:
    for k, v in EXPECTED.items():
        assert res[k] == v, k
    assert res["conv"] == cold["conv"]


def test_second_start_uses_the_cache_and_runs_the_same_operators(tmp_path):
    cache = tmp_path / "cache with space"
    cold = _run(cache)
    assert cold["stats"]["hits"] == 0 and cold["stats"]["compiled"] > 2000
    files = list(cache.glob("mxnet-ops.*.marshal"))
    assert len(files) == 1
    _same_operators(cold, cold)
    written = files[0].stat().st_mtime_ns
    warm = _run(cache)  # a new process: other operator handles (ASLR), the same functions
    assert warm["stats"]["compiled"] == 0 and warm["stats"]["hits"] == cold["stats"]["compiled"]
    _same_operators(warm, cold)
    assert files[0].stat().st_mtime_ns == written  # a warm start does not rewrite it (0.7 s)


def test_a_corrupt_or_unwritable_cache_falls_back_to_compiling(tmp_path):
    cache = tmp_path / "c"
    cold = _run(cache)
    path = Path(cold["stats"]["path"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated (a kill -9 mid-write, a full disk)
    res = _run(cache)
    assert res["stats"]["hits"] == 0 and res["stats"]["compiled"] > 2000
    _same_operators(res, cold)
    assert _run(cache)["stats"]["compiled"] == 0  # rewritten whole

    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    res = _run(blocked / "cache")  # cannot be created: still imports, nothing written
    assert res["stats"]["compiled"] > 2000
    _same_operators(res, cold)
    assert blocked.read_text() == "not a folder"
