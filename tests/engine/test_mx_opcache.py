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
    assert cold["stats"]["compiled"] > 2000  # (a few hundred operators share their source: hits)
    files = list(cache.glob("mxnet-ops.*.marshal"))
    assert len(files) == 1
    _same_operators(cold, cold)
    written = files[0].stat().st_mtime_ns
    warm = _run(cache)  # a new process: other operator handles (ASLR), the same functions
    assert warm["stats"]["compiled"] == 0
    assert warm["stats"]["hits"] == cold["stats"]["hits"] + cold["stats"]["compiled"]
    assert warm["stats"]["fallbacks"] == cold["stats"]["fallbacks"] == 0
    _same_operators(warm, cold)
    assert files[0].stat().st_mtime_ns == written  # a warm start does not rewrite it (0.7 s)


def test_a_corrupt_or_unwritable_cache_falls_back_to_compiling(tmp_path):
    cache = tmp_path / "c"
    cold = _run(cache)
    path = Path(cold["stats"]["path"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated (a kill -9 mid-write, a full disk)
    res = _run(cache)
    assert res["stats"]["compiled"] == cold["stats"]["compiled"]
    _same_operators(res, cold)
    assert _run(cache)["stats"]["compiled"] == 0  # rewritten whole

    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    res = _run(blocked / "cache")  # cannot be created: still imports, nothing written
    assert res["stats"]["compiled"] > 2000
    _same_operators(res, cold)
    assert blocked.read_text() == "not a folder"


SOURCE = 'def relu(*args):\n    """relu docs"""\n    return _imperative_invoke({h}, args, None)\n'


def _call(code) -> int:
    local: dict = {}
    exec(code, {"_imperative_invoke": lambda handle, args, out: handle}, local)
    return local["relu"]()


def test_the_cache_puts_each_process_handle_back(tmp_path):
    """In-process, without mxnet: two sources that differ only in the operator handle share one cache
    entry, and each function calls with its own handle; the saved file serves a third handle."""
    from engine.core.mx_opcache import OpCodeCache

    cache = OpCodeCache(tmp_path / "ops.marshal")
    assert _call(cache.compiled(SOURCE.format(h=140230001))) == 140230001
    assert _call(cache.compiled(SOURCE.format(h=94811234))) == 94811234
    assert (cache.misses, cache.hits, cache.fallbacks) == (1, 1, 0)
    cache.save()
    again = OpCodeCache(tmp_path / "ops.marshal")
    assert _call(again.compiled(SOURCE.format(h=77))) == 77
    assert (again.misses, again.hits, again.fallbacks) == (0, 1, 0)
    assert not list(tmp_path.glob("*.tmp"))

    two = "def relu():\n    return _imperative_invoke(5, 1, 2) + _imperative_invoke(6, 1, 2)\n"
    local: dict = {}
    exec(again.compiled(two), {"_imperative_invoke": lambda h, a, o: h}, local)
    assert local["relu"]() == 11 and again.fallbacks == 1  # two handles: compiled as it is


def test_a_cache_file_with_other_values_is_not_trusted(tmp_path):
    import hashlib
    import marshal

    from engine.core.mx_opcache import HEADER, SENTINEL, OpCodeCache

    norm = SOURCE.format(h=SENTINEL)
    path = tmp_path / "ops.marshal"
    path.write_bytes(HEADER + marshal.dumps({hashlib.sha1(norm.encode()).digest(): "not code"}))
    cache = OpCodeCache(path)
    assert _call(cache.compiled(SOURCE.format(h=31))) == 31
    assert cache.misses == 1 and cache.hits == 0


def _by_regex(source: str):
    from engine.core.mx_opcache import _HANDLE, SENTINEL

    handles = {int(m.group(2)) for m in _HANDLE.finditer(source)}
    return _HANDLE.sub(lambda m: f"{m.group(1)}({SENTINEL},", source), handles


def test_the_handle_search_finds_what_the_pattern_finds():
    """_normalised (str.find, for start-up speed) must find exactly _HANDLE's matches: a missed
    handle would cache one process's pointer, a false one would corrupt a function's source."""
    from engine.core.mx_opcache import _normalised

    cases = [
        "def relu(data=None, out=None, name=None, **kwargs):\n    ...\n"
        "    return _imperative_invoke(94325038483216, ndargs, keys, vals, out, name, False)\n",
        "    return _symbol_creator(140011, sym_args, sym_kwargs, keys, vals, name, False, False)",
        "_imperative_invoke(7, a)",                      # at the very start
        "x_imperative_invoke(7, a) and 2_symbol_creator(8, b)",  # inside a longer name: not a call
        "_imperative_invoke(, a) _imperative_invoke(12 , a) _imperative_invoke(x12, a)",  # no handle
        "_symbol_creator(5, a) + _imperative_invoke(6, b) + _symbol_creator(5, c)",  # several, mixed
        "_imperative_invoke(_imperative_invoke(9, a)",   # a call name right after another's bracket
        "nothing to see here",
        "",
        " _symbol_creator(123",                          # runs off the end
        "__imperative_invoke(7, a)",                     # an underscore before the name: not a call
        "_imperative_invoke(7, ab",                      # at the very start, a word character at the end
        "_symbol_creator(\u0663, a)",                    # a non-ASCII digit is no handle
    ]
    for src in cases:
        assert _normalised(src) == _by_regex(src), src


def test_the_handle_search_agrees_with_the_pattern_on_every_real_operator_source(tmp_path):
    """The same check on the 2,556 sources MXNet itself generates at import (a fresh process)."""
    code = r"""
import sys
from engine.core import mx_opcache as m
sys.path.insert(0, "tests/engine")
from test_mx_opcache import _by_regex
seen, bad, orig = [0], [], m.OpCodeCache.compiled
def compiled(self, source):
    seen[0] += 1
    if m._normalised(source) != _by_regex(source):
        bad.append(source[:200])
    return orig(self, source)
m.OpCodeCache.compiled = compiled
m.import_mxnet_cached()
print("CHECKED", seen[0], len(bad), bad[:1])
"""
    env = dict(os.environ, BRAINSEG_CACHE=str(tmp_path), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("CHECKED")).split()
    assert int(line[1]) > 2000 and line[2] == "0", line
