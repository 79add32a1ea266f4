"""The FP32 fused-graph cache (engine/infer/graph_cache.py, Segmenter): start-up of every
`brainseg segment` (issue #21). What a user would notice if it broke: other labels than the
network's own, another model's graph, or a segmentation that fails because of the cache."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from engine.core.mx_env import get_mx


def _scan():
    """A non-cubic, asymmetric head-like phantom (the network is untrained: any labels will do, the
    point is that they are the same)."""
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[0:40, 0:56, 0:24]
    vol = 120.0 * (((x - 11) / 10.0) ** 2 + ((y - 30) / 22.0) ** 2 + ((z - 17) / 15.0) ** 2 < 1)
    vol[8:20, 20:30, 6:12] = 60.0
    return (vol + rng.normal(0, 4, vol.shape)).clip(0).astype(np.float32)


def _segment(model_dir, vol):
    from engine.infer.inference import SegmentConfig, Segmenter

    seg = Segmenter(model_dir)
    res = seg.segment(vol, SegmentConfig(return_probabilities=True))
    return seg, res


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fp32"


def test_the_fused_graph_is_cached_and_gives_the_same_probabilities(gentle_model_dir, cache, caplog):
    caplog.set_level(logging.INFO, logger="engine.infer.inference")
    vol = _scan()
    built, first = _segment(gentle_model_dir, vol)
    assert type(built.net).__name__ == "ENet" and "from the cache" not in caplog.text
    assert sorted(p.name.split("-", 2)[2] for p in cache.iterdir()) == ["0000.params", "meta.json", "symbol.json"]
    caplog.clear()
    loaded, again = _segment(gentle_model_dir, vol)
    assert "from the cache" in caplog.text and type(loaded.net).__name__ == "SymbolBlock"
    assert (loaded.multiple, loaded.parameter_count) == (built.multiple, built.parameter_count)
    np.testing.assert_array_equal(again.probabilities, first.probabilities)
    np.testing.assert_array_equal(again.labels, first.labels)


def test_other_weights_never_get_this_models_graph(gentle_model_dir, tmp_path, cache):
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir

    vol = _scan()
    _, mine = _segment(gentle_model_dir, vol)
    other = tmp_path / "other"
    shutil.copytree(gentle_model_dir, other)
    mx = get_mx()
    net = get_model("enet")
    net.initialize(mx.init.Xavier(magnitude=0.5))
    net(mx.nd.zeros((1, 1, 32, 32)))
    write_model_dir(other, net, "enet", version="gentle-test")  # same name and version, other weights
    _, theirs = _segment(other, vol)
    _, theirs_again = _segment(other, vol)  # now from the cache: its own entry
    assert len(list(cache.glob("*-symbol.json"))) == 2
    assert not np.array_equal(theirs.probabilities, mine.probabilities)
    np.testing.assert_array_equal(theirs_again.probabilities, theirs.probabilities)


def test_a_damaged_or_unwritable_cache_still_segments(gentle_model_dir, tmp_path, cache, monkeypatch, caplog):
    vol = _scan()
    _, first = _segment(gentle_model_dir, vol)
    params = next(cache.glob("*-0000.params"))
    size = params.stat().st_size
    params.write_bytes(params.read_bytes()[: size // 3])  # a truncated file
    caplog.set_level(logging.INFO, logger="engine.infer.inference")
    seg, fixed = _segment(gentle_model_dir, vol)
    assert "unreadable" in caplog.text and type(seg.net).__name__ == "ENet"
    np.testing.assert_array_equal(fixed.probabilities, first.probabilities)
    assert params.stat().st_size == size  # written again
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("BRAINSEG_CACHE", str(blocker))
    caplog.clear()
    _, blocked = _segment(gentle_model_dir, vol)
    assert "not written" in caplog.text
    np.testing.assert_array_equal(blocked.probabilities, first.probabilities)
    import engine.core.mx_opcache as opcache

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("BRAINSEG_CACHE")
    monkeypatch.setattr(opcache, "cache_dir", no_home)  # no folder for caches at all
    _, homeless = _segment(gentle_model_dir, vol)
    np.testing.assert_array_equal(homeless.probabilities, first.probabilities)


def test_a_calibrated_model_is_the_same_model_whether_its_graph_was_cached_or_built(gentle_model_dir, tmp_path,
                                                                                   cache):
    """What the Segmenter says of the model (name, calibration) and its labels do not depend on
    where the graph came from; a calibration edited in model.json takes effect with a cached graph."""
    import json

    from engine.infer.inference import SegmentConfig, Segmenter

    model = tmp_path / "calibrated"
    shutil.copytree(gentle_model_dir, model)
    meta = json.loads((model / "model.json").read_text())
    meta["calibration"] = {"class_weights": [1.0, 0.5, 1.0, 2.0]}
    (model / "model.json").write_text(json.dumps(meta))
    vol = _scan()
    built = Segmenter(model)
    loaded = Segmenter(model)
    assert type(loaded.net).__name__ == "SymbolBlock"
    for attr in ("name", "class_weights", "multiple", "parameter_count", "precision", "model_dir"):
        assert getattr(loaded, attr) == getattr(built, attr), attr
    assert loaded.class_weights == (1.0, 0.5, 1.0, 2.0)
    cfg = SegmentConfig(return_probabilities=True)
    np.testing.assert_array_equal(loaded.segment(vol, cfg).probabilities, built.segment(vol, cfg).probabilities)
    meta["calibration"] = {"class_weights": [1.0, 2.0, 1.0, 1.0]}  # edited after the graph was cached
    (model / "model.json").write_text(json.dumps(meta))
    again = Segmenter(model)
    assert type(again.net).__name__ == "SymbolBlock" and again.class_weights == (1.0, 2.0, 1.0, 1.0)


def test_the_key_changes_with_everything_that_makes_the_graph(gentle_model_dir, tmp_path, monkeypatch):
    import json

    import engine.core.mx_opcache as opcache
    from engine.infer import inference
    from engine.nets.weights import read_model_dir

    info = read_model_dir(gentle_model_dir)
    base = inference._fused_graph_key(info)
    assert inference._fused_graph_key(read_model_dir(gentle_model_dir)) == base  # stable
    changed = {}
    info.meta["sha256"] = "0" * 64
    changed["weights"] = inference._fused_graph_key(info)
    info = read_model_dir(gentle_model_dir)
    info.arch_kwargs["skips"] = not info.arch_kwargs.get("skips", True)
    changed["arch_kwargs"] = inference._fused_graph_key(info)
    info = read_model_dir(gentle_model_dir)
    monkeypatch.setattr(opcache, "mxnet_build", lambda: "another-build")
    changed["MXNet build"] = inference._fused_graph_key(info)
    monkeypatch.undo()
    monkeypatch.setenv("MXNET_DISABLE_MKLDNN_FC_OPT", "1")
    changed["oneDNN switch"] = inference._fused_graph_key(info)
    monkeypatch.undo()
    monkeypatch.setattr(inference, "GRAPH_CACHE_FORMAT", inference.GRAPH_CACHE_FORMAT + 1)
    changed["format"] = inference._fused_graph_key(info)
    monkeypatch.undo()
    for part, key in changed.items():
        assert key != base, part
    # model folders without a checksum in model.json: keyed by their parameter files' own
    keys = []
    for i, magnitude in enumerate((0.5, 0.6)):
        d = tmp_path / f"nosum{i}"
        shutil.copytree(gentle_model_dir, d)
        from engine.nets import get_model
        from engine.nets.weights import write_model_dir

        mx = get_mx()
        net = get_model("enet")
        net.initialize(mx.init.Xavier(magnitude=magnitude))
        net(mx.nd.zeros((1, 1, 32, 32)))
        write_model_dir(d, net, "enet", version="same")
        meta = json.loads((d / "model.json").read_text())
        del meta["sha256"]
        (d / "model.json").write_text(json.dumps(meta))
        keys.append(inference._fused_graph_key(read_model_dir(d)))
    assert keys[0] != keys[1]
    monkeypatch.setenv("MXNET_MKLDNN_ENABLED", "0")  # oneDNN switched off: no fused graph at all
    assert not inference._onednn(get_mx().cpu())


def test_files_left_without_their_symbol_are_removed_once_stale(gentle_model_dir, cache):
    import os
    import time

    cache.mkdir(parents=True)
    old, fresh = cache / "fp32-gone-0000.params", cache / "fp32-writing-meta.json"
    for f in (old, fresh, cache / "fp32-gone-meta.json"):
        f.write_text("x")
    then = time.time() - 7200
    os.utime(old, (then, then))
    os.utime(cache / "fp32-gone-meta.json", (then, then))
    kept = [cache / f"fp32-kept{suffix}" for suffix in ("-symbol.json", "-0000.params", "-meta.json")]
    for f in kept:  # a whole entry of another model, as old: it stays
        f.write_text("x")
        os.utime(f, (then, then))
    _segment(gentle_model_dir, _scan())  # a miss: writes its entry and tidies the folder
    names = sorted(p.name for p in cache.iterdir())
    assert "fp32-gone-0000.params" not in names and "fp32-gone-meta.json" not in names
    assert "fp32-writing-meta.json" in names and all(f.name in names for f in kept) and len(names) == 7
