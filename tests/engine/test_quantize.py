"""INT8 post-training quantization (MXNet oneDNN) of both networks.

Untrained networks say little about INT8 accuracy: a random ENet's 84 stacked convolutions amplify
the INT8 error until its logits are off by ~100% (relative L2), while the same code on an ENet
trained on a phantom keeps 99% of labels. So the small untrained nets here check that quantization
runs, keeps shapes, quantizes what it should and keeps ENet's unpooling exact; the close-to-FP32
check is made on the small U-Net (observed: 7.5% logit error, 100% agreement on decisive pixels) and,
when shipped weights are present, on both real networks and the demo scan."""
import json

import numpy as np
import pytest

from engine.core.mx_env import get_mx

mx = get_mx()


def phantom(shape=(64, 56, 6), seed=0):
    """CSF / grey / white rings with noise, one empty slice."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    labels = np.zeros(shape, np.uint8)
    for k in range(1, shape[2]):
        r = np.hypot(x / 0.7, y / 0.8) + 0.08 * np.sin(5 * np.arctan2(y, x) + k)
        labels[..., k] = np.select([r < 0.5, r < 0.75, r < 0.92], [3, 2, 1], 0)
    vol = np.array([0, 60, 120, 180], np.float32)[labels] + rng.normal(0, 8, shape).astype(np.float32)
    vol[labels == 0] = 0
    return np.clip(vol, 0, None).astype(np.float32)


@pytest.fixture(scope="module")
def slices():
    from engine.infer.quantize import calibration_slices

    return calibration_slices(phantom()), calibration_slices(phantom(seed=1))


@pytest.fixture(scope="module")
def unet_pair(slices):
    from engine.infer.quantize import quantize_model
    from engine.nets import get_model

    net = get_model("unet", base=8, levels=3)
    net.initialize(mx.init.Xavier(magnitude=6))
    return net, quantize_model(net, slices[0])


def _ops(block) -> dict:
    counts = {}
    for node in json.loads(block(mx.sym.var("data")).tojson())["nodes"]:
        counts[node["op"]] = counts.get(node["op"], 0) + 1
    return counts


def test_calibration_slices_are_normalised_foreground_slices():
    from engine.infer.quantize import calibration_slices

    vol = phantom(shape=(64, 56, 30))
    s = calibration_slices(vol, count=8)
    assert s.shape[0] == 8 and s.dtype == np.float32
    assert 0 <= s.min() and s.max() <= 3.0 and all(sl.any() for sl in s)
    assert s.shape[1] <= 64 and s.shape[2] <= 56  # cropped to the foreground box plus margin
    with pytest.raises(ValueError, match="no foreground"):
        calibration_slices(np.zeros((8, 8, 4), np.float32))


def test_unet_int8_is_close_to_fp32(unet_pair, slices):
    from engine.infer.preprocess import SlicePadding
    from engine.infer.quantize import label_agreement

    net, qnet = unet_pair
    ops = _ops(qnet)
    assert ops.get("_contrib_quantize_v2", 0) > 0 and ops.get("_sg_mkldnn_conv", 0) == 11
    assert qnet.multiple == net.multiple == 4
    x = SlicePadding.for_shape(slices[1].shape[1:], 4).pad(slices[1])[:, None]  # held-out phantom
    f = net(mx.nd.array(x)).asnumpy()
    g = qnet(mx.nd.array(x)).asnumpy()
    assert g.shape == f.shape and np.isfinite(g).all()
    assert np.linalg.norm(g - f) / np.linalg.norm(f) < 0.2
    top2 = np.sort(f, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 0.1 * np.abs(f).max()
    assert decisive.mean() > 0.02
    assert (f.argmax(1) == g.argmax(1))[decisive].mean() >= 0.99
    agree = label_agreement(net, qnet, slices[1])
    assert agree.fp32.shape == agree.int8.shape == slices[1].shape and agree.int8.dtype == np.uint8
    assert 0.5 < agree.agreement <= 1 and "pixels agree" in str(agree)


def test_enet_int8_runs_with_exact_unpooling(tiny_model_dir, slices):
    from engine.infer.inference import Segmenter, load_network
    from engine.infer.quantize import quantize_model, unpool_mask_layers

    net, info = load_network(tiny_model_dir)
    mask_pools = unpool_mask_layers(net)
    assert len(mask_pools) == 2  # the two max-unpooling decoder stages
    qnet = quantize_model(net, slices[0][:2])
    ops = _ops(qnet)
    assert ops.get("_contrib_quantize_v2", 0) > 0 and ops.get("_contrib_quantized_pooling", 0) > 0  # INT8 ran
    # the pools that only build the unpooling masks stay FP32 (an INT8 max would shift the argmax
    # positions): they are still plain Pooling nodes of the quantized graph, under their own names
    nodes = json.loads(qnet(mx.sym.var("data")).tojson())["nodes"]
    fp32_pools = {n["name"] for n in nodes if n["op"] == "Pooling"}
    assert set(mask_pools) <= fp32_pools
    # the INT8 block drops into the normal inference path
    vol = phantom(seed=1)
    from engine.infer.inference import SegmentConfig

    res = Segmenter.from_network(qnet, info).segment(vol, SegmentConfig(planes=("axial",)))
    assert res.labels.shape == vol.shape and res.labels.dtype == np.uint8
    assert (res.labels[..., 0] == 0).all() and res.slices_run == 5


def test_bad_settings_are_refused(unet_pair, slices):
    from engine.infer.quantize import quantize_model

    net, _ = unet_pair
    with pytest.raises(ValueError, match="calib_mode"):
        quantize_model(net, slices[0], calib_mode="percentile")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        quantize_model(net, slices[0][0])


@pytest.mark.parametrize("arch", ["unet", "enet"])
def test_shipped_weights_keep_their_labels_in_int8(arch):
    """With the real weights: calibrate on 4 slices of the demo scan, compare on 4 others."""
    from engine.core.paths import DEMO_SCAN
    from engine.infer.inference import load_network
    from engine.infer.quantize import calibration_slices, label_agreement, quantize_model
    from engine.io.volume import read_volume
    from engine.nets.weights import shipped_model_dir

    if not (shipped_model_dir(arch) / "model.json").exists() or not DEMO_SCAN.exists():
        pytest.skip(f"no shipped {arch} weights")
    net, _ = load_network(shipped_model_dir(arch))
    s = calibration_slices(read_volume(DEMO_SCAN, kind="image").data, count=8)
    qnet = quantize_model(net, s[::2])
    agree = label_agreement(net, qnet, s[1::2])
    print(arch, agree)
    assert agree.foreground_agreement >= 0.95


@pytest.fixture
def small_unet_dir(tmp_path):
    """A small U-Net model folder (random weights; INT8 only has to run and be reproducible)."""
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir

    net = get_model("unet", base=8, levels=3)
    net.initialize(mx.init.Xavier(magnitude=2))
    net(mx.nd.zeros((1, 1, 32, 32)))
    return write_model_dir(tmp_path / "unet", net, "unet", {"base": 8, "levels": 3}, version="small-unet").directory


def test_the_int8_network_is_cached_reused_and_requantized_when_damaged_or_changed(small_unet_dir, tmp_path,
                                                                                   monkeypatch, caplog):
    """Issue #21 (U-Net's speed): quantizing costs seconds at every start; the quantized graph is kept
    in the cache folder and loaded the next time, with the same labels. A damaged entry is quantized
    again and rewritten; other weights never get this model's graph."""
    import logging
    import shutil

    from engine.infer.inference import SegmentConfig, Segmenter

    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    vol = phantom((48, 40, 8))
    caplog.set_level(logging.INFO, logger="engine.infer.quantize")
    first = Segmenter(small_unet_dir, precision="int8").segment(vol, SegmentConfig(planes=("axial",)))
    entries = sorted((tmp_path / "cache" / "int8").iterdir())
    assert [p.name.split("-", 1)[1] for p in entries] == ["0000.params", "meta.json", "symbol.json"]
    assert "quantized UNet" in caplog.text and "from the cache" not in caplog.text
    caplog.clear()
    again = Segmenter(small_unet_dir, precision="int8").segment(vol, SegmentConfig(planes=("axial",)))
    assert "from the cache" in caplog.text and "quantized UNet" not in caplog.text
    np.testing.assert_array_equal(again.labels, first.labels)
    # a damaged entry (a truncated params file): quantized again, the same labels, the entry rewritten
    params = next(p for p in entries if p.name.endswith(".params"))
    size = params.stat().st_size
    params.write_bytes(params.read_bytes()[: size // 3])
    caplog.clear()
    fixed = Segmenter(small_unet_dir, precision="int8").segment(vol, SegmentConfig(planes=("axial",)))
    assert "unreadable" in caplog.text and "quantized UNet" in caplog.text
    np.testing.assert_array_equal(fixed.labels, first.labels)
    assert params.stat().st_size == size
    # other weights in the same architecture: their own entry, never this one's graph
    other = tmp_path / "other"
    shutil.copytree(small_unet_dir, other)
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir

    net = get_model("unet", base=8, levels=3)
    net.initialize(mx.init.Xavier(magnitude=2))
    net(mx.nd.zeros((1, 1, 32, 32)))
    write_model_dir(other, net, "unet", {"base": 8, "levels": 3}, version="small-unet")
    caplog.clear()
    Segmenter(other, precision="int8")
    assert "quantized UNet" in caplog.text
    assert len(list((tmp_path / "cache" / "int8").iterdir())) == 6


def test_a_write_killed_halfway_leaves_no_entry_and_is_cleaned_up_later(small_unet_dir, tmp_path, monkeypatch):
    """kill -9 while the graph was being written leaves a ".writing-*" folder and no entry: the next
    start quantizes (it never loads half a graph) and removes such folders once they are stale."""
    import os
    import time

    from engine.infer.inference import Segmenter

    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "int8"
    stale, fresh = folder / ".writing-old", folder / ".writing-now"
    for d in (stale, fresh):
        d.mkdir(parents=True)
        (d / "q-0000.params").write_bytes(b"half a file")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    Segmenter(small_unet_dir, precision="int8")
    assert not stale.exists() and fresh.exists()
    assert sorted(p.name.split("-", 1)[1] for p in folder.iterdir() if not p.name.startswith(".")) == [
        "0000.params", "meta.json", "symbol.json"]


def test_an_unwritable_cache_still_segments_in_int8(small_unet_dir, tmp_path, monkeypatch):
    from engine.infer.inference import SegmentConfig, Segmenter

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("BRAINSEG_CACHE", str(blocker))
    res = Segmenter(small_unet_dir, precision="int8").segment(phantom((48, 40, 8)), SegmentConfig(planes=("axial",)))
    assert res.labels.shape == (48, 40, 8) and "INT8" in res.model


def test_the_cache_keeps_the_most_recently_used_entries_only(small_unet_dir, tmp_path, monkeypatch):
    """Every U-Net version run in INT8 adds an entry (the shipped one about 8 MB): the folder keeps
    CACHE_ENTRIES of them, dropping the least recently used; an entry just read counts as used."""
    import os
    import time

    from engine.infer import quantize
    from engine.infer.inference import Segmenter

    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(quantize, "CACHE_ENTRIES", 2)
    folder = tmp_path / "cache" / "int8"
    folder.mkdir(parents=True)
    now = time.time()
    for name, age in (("old", 3000), ("older", 4000)):  # two entries of other models, used earlier
        for suffix in ("-symbol.json", "-0000.params"):
            (folder / (name + suffix)).write_text("{}")
            os.utime(folder / (name + suffix), (now - age, now - age))
    Segmenter(small_unet_dir, precision="int8")  # a third entry: the least recently used goes
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 5 and "older-symbol.json" not in names and "older-0000.params" not in names
    assert "old-symbol.json" in names
    own = next(p for p in folder.glob("*-symbol.json") if not p.name.startswith("old"))
    os.utime(own, (now - 5000, now - 5000))  # our entry is now the oldest ...
    Segmenter(small_unet_dir, precision="int8")  # ... but reading it marks it used
    assert own.stat().st_mtime > now - 60
