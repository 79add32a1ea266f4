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
