"""Both networks: build, train a few steps, infer, export/import round trips, dropout semantics,
and whole-volume segmentation with progress and cancel. Real MXNet on small inputs."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from engine.core.mx_env import get_mx

mx = get_mx()


def _net(name):
    from engine.nets import get_model
    from engine.train.loop import init_network

    net = get_model(name)
    init_network(net)
    return net


def test_registry_names_valid_choices():
    from engine.nets import get_model

    with pytest.raises(ValueError, match="unet, enet"):
        get_model("resnet")


@pytest.mark.parametrize("name,lo,hi", [("unet", 7.7e6, 7.9e6), ("enet", 0.34e6, 0.40e6)])
def test_build_train_and_infer(name, lo, hi):
    from engine.nets import count_parameters
    from engine.train.loop import FitConfig, fit

    net = _net(name)
    net.hybridize(static_alloc=True)
    x = np.random.default_rng(0).random((2, 1, 32, 48)).astype(np.float32)
    y = (x[:, 0] * 4).astype(np.uint8).clip(0, 3)
    out = net(mx.nd.array(x))
    assert out.shape == (2, 4, 32, 48)
    assert lo < count_parameters(net) < hi
    before = {k: p.data().asnumpy().copy() for k, p in net.collect_params().items()}
    losses = []
    fit(net, iter([(x, y)] * 4), FitConfig(steps=4, batch_size=2, log_every=1),
        on_progress=lambda p: losses.append(p.loss))
    changed = [k for k, p in net.collect_params().items()
               if p.grad_req != "null" and not np.allclose(before[k], p.data().asnumpy())]
    assert changed and all(np.isfinite(v) for v in losses[1:])


def test_hybridized_enet_trains_with_one_channel_input_in_a_subprocess():
    """MXNet 1.9.1 + oneDNN dies with SIGFPE in MKLDNNConcatBackward when a concat's first input
    has a channel count that is not a multiple of 16 (ENet's 15+1 initial block). Our ENet avoids
    that concat; a crash here would kill the process, so it runs in a child."""
    code = textwrap.dedent("""
        from engine.core.mx_env import get_mx
        mx = get_mx()
        from engine.nets import get_model
        from engine.train.loop import seg_loss, SEED_CLASS_WEIGHTS
        net = get_model("enet"); net.initialize(mx.init.Xavier(magnitude=6)); net.hybridize(static_alloc=True)
        tr = mx.gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-3})
        x = mx.nd.random.uniform(shape=(2, 1, 64, 64)); y = mx.nd.zeros((2, 64, 64), dtype="int32")
        for _ in range(2):
            with mx.autograd.record():
                l = seg_loss(mx.nd, net(x), y, SEED_CLASS_WEIGHTS, 1.0)
            l.backward(); tr.step(2)
        mx.nd.waitall(); print("OK", float(l.asscalar()))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert "OK" in r.stdout


def test_spatial_dropout_masks_per_sample_and_channel_and_rescales():
    x = mx.nd.ones((8, 16, 6, 6))
    with mx.autograd.train_mode():
        y = mx.nd.Dropout(x, p=0.5, axes=(2, 3)).asnumpy()
    per_map = y.reshape(8, 16, -1)
    assert np.all(per_map.min(axis=2) == per_map.max(axis=2)), "one value per (sample, channel) map"
    assert set(np.unique(per_map)) <= {0.0, 2.0}, "kept maps are rescaled by 1/(1-p)"
    assert len({tuple(m) for m in per_map[:, :, 0]}) > 1, "masks differ between samples"


@pytest.mark.parametrize("name", ["unet", "enet"])
def test_export_import_round_trips(name, tmp_path):
    from engine.infer.inference import load_network
    from engine.nets.weights import write_model_dir

    net = _net(name)
    net.hybridize()
    x = mx.nd.array(np.random.default_rng(1).random((1, 1, 32, 32)).astype(np.float32))
    ref = net(x).asnumpy()
    net.export(str(tmp_path / name))  # frozen inference artifact
    sym = mx.gluon.SymbolBlock.imports(str(tmp_path / f"{name}-symbol.json"), ["data"],
                                       str(tmp_path / f"{name}-0000.params"))
    np.testing.assert_allclose(sym(x).asnumpy(), ref, rtol=1e-4, atol=1e-4)
    write_model_dir(tmp_path / "dir", net, name, version="t")  # fine-tuning checkpoint
    net2, info = load_network(tmp_path / "dir", mx.cpu())
    np.testing.assert_allclose(net2(x).asnumpy(), ref, rtol=1e-4, atol=1e-4)
    assert info.arch == name


def test_corrupt_weights_are_refused(tmp_path):
    from engine.nets.weights import WeightsError, read_model_dir, write_model_dir

    net = _net("enet")
    net(mx.nd.zeros((1, 1, 16, 16)))
    write_model_dir(tmp_path, net, "enet", version="t")
    with open(tmp_path / "model.params", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(WeightsError, match="checksum"):
        read_model_dir(tmp_path)


def test_segment_volume_grid_progress_and_cancel(tiny_model_dir):
    from engine.core.cancel import Cancelled, CancelToken
    from engine.infer.inference import SegmentConfig, Segmenter

    vol = np.zeros((40, 52, 7), np.float32)
    vol[8:30, 10:40, 1:6] = 300.0  # int16-like scale: normalisation must not care
    seg = Segmenter(tiny_model_dir)
    seen = []
    res = seg.segment(vol, SegmentConfig(batch_size=2, uncertainty=True, secondary_stride=1),
                      progress=lambda d, t: seen.append((d, t)))
    assert res.labels.shape == vol.shape and res.labels.dtype == np.uint8
    assert res.labels[:, :, 0].max() == 0, "empty slices are background"
    # three planes: 5 axial slices hold brain, 22 sagittal (x 8..29), 30 coronal (y 10..39)
    assert res.planes == ("axial", "coronal", "sagittal") and res.slices_run == 5 + 22 + 30
    assert seen[0] == (0, 57) and seen[-1] == (57, 57) and res.uncertainty.shape == vol.shape
    assert (res.labels[vol > 0] > 0).all() and (res.labels[vol == 0] == 0).all()  # FSL_SEG semantics
    seen.clear()
    one = seg.segment(vol, SegmentConfig(batch_size=2, planes=("axial",)), progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (5, 5) and one.planes == ("axial",)
    # the default: every 3rd coronal and sagittal slice (and the last), interpolated between
    sparse = seg.segment(vol, SegmentConfig(batch_size=2))
    assert sparse.slices_run == 5 + len(range(8, 30, 3)) + len(range(10, 40, 3)) + 1  # 39 is last, 10+27=37
    assert (sparse.labels[vol > 0] > 0).all()
    # cancel while it runs (after the first batch): it stops before the end
    tok = CancelToken()
    seen.clear()

    def cancel_after_first_batch(d, t):
        seen.append(d)
        if d > 0:
            tok.cancel()

    with pytest.raises(Cancelled):
        seg.segment(vol, SegmentConfig(batch_size=2, secondary_stride=1), progress=cancel_after_first_batch, cancel=tok)
    assert 0 < max(seen) < 57


def test_cropping_to_foreground_matches_full_slices_with_shipped_weights():
    """Per-batch cropping to the brain changes almost nothing for a trained network."""
    from engine.core.paths import DEMO_SCAN
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.io.volume import read_volume
    from engine.nets.weights import shipped_model_dir

    if not (shipped_model_dir("unet") / "model.json").exists():
        pytest.skip("no shipped U-Net weights")
    vol = read_volume(DEMO_SCAN).data[:, :, 60:66]
    seg = Segmenter(shipped_model_dir("unet"))
    a = seg.segment(vol, SegmentConfig(crop_to_foreground=True)).labels
    b = seg.segment(vol, SegmentConfig(crop_to_foreground=False)).labels
    inside = vol > 0
    assert (a[inside] == b[inside]).mean() > 0.99


def test_uncertainty_is_higher_on_an_ambiguous_input():
    """Softmax entropy rises where the image stops looking like tissue the model knows."""
    from engine.core.paths import DEMO_SCAN
    from engine.infer.inference import SegmentConfig, Segmenter, least_certain_slices
    from engine.io.volume import read_volume
    from engine.nets.weights import shipped_model_dir

    if not (shipped_model_dir("unet") / "model.json").exists():
        pytest.skip("no shipped U-Net weights")
    vol = read_volume(DEMO_SCAN).data[:, :, 80:84].copy()
    brain = vol > 0
    ambiguous = vol.copy()
    ambiguous[:, :, 2:] = np.where(brain[:, :, 2:], np.percentile(vol[brain], 60), 0)  # a flat grey brain
    ambiguous[:, :, 2:] += np.random.default_rng(0).normal(0, 25, ambiguous[:, :, 2:].shape) * brain[:, :, 2:]
    seg = Segmenter(shipped_model_dir("unet"))
    axial = SegmentConfig(uncertainty=True, planes=("axial",))  # a 4-slice slab: axial views only
    u_real = seg.segment(vol, axial).uncertainty
    u_amb = seg.segment(ambiguous, axial).uncertainty
    amb, real = u_amb[:, :, 2:][brain[:, :, 2:]].mean(), u_real[:, :, 2:][brain[:, :, 2:]].mean()
    assert amb > 1.5 * real, (amb, real)
    ranked = [k for k, _ in least_certain_slices(u_amb, 4)]
    assert set(ranked[:2]) == {2, 3}, "the ambiguous slices are listed first"


def _randomised_enet(skips=True, seed=0):
    """An ENet with trained-looking BatchNorm statistics and PReLU slopes, not Xavier defaults."""
    net = get_model_enet(skips)
    x = mx.nd.array(np.random.default_rng(seed).random((2, 1, 32, 48)))
    net(x)
    rng = np.random.default_rng(seed)
    for name, p in net.collect_params().items():
        shape = p.shape
        if name.endswith("alpha"):
            p.set_data(mx.nd.array(rng.uniform(0.05, 0.7, shape)))
        elif name.endswith("running_var"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 2.0, shape)))
        elif name.endswith(("running_mean", "beta")):
            p.set_data(mx.nd.array(rng.normal(0, 0.3, shape)))
        elif name.endswith("gamma"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, shape)))
        elif "skip" in name or "refine_out" in name:
            p.set_data(mx.nd.array(rng.normal(0, 0.05, shape)))
        elif name.endswith("weight"):  # He-scaled, from this seed: not mx.random's state, which
            # earlier tests move (a test's network, and so its gradients' conditioning, would
            # depend on which tests ran before it)
            p.set_data(mx.nd.array(rng.normal(0, np.sqrt(2.0 / max(1, int(np.prod(shape[1:])))), shape)))
        elif name.endswith("bias"):
            p.set_data(mx.nd.array(rng.normal(0, 0.05, shape)))
    return net


def get_model_enet(skips):
    from engine.nets import get_model
    from engine.train.loop import init_network

    net = get_model("enet", skips=skips)
    init_network(net)
    return net


def test_enet_fused_for_inference_computes_the_same_function(tmp_path):
    """The inference rewrite (PReLU as BatchNorms + ReLU, no dropout, oneDNN subgraph) changes
    the logits by float rounding only; a slope outside [0, 1] keeps its exact PReLU."""
    net = _randomised_enet()
    net.initial.act.alpha.set_data(mx.nd.array(np.linspace(-0.2, 1.3, 16)))  # not fusable
    path = str(tmp_path / "enet.params")
    net.save_parameters(path)
    fused = get_model_enet(True)
    fused.load_parameters(path)
    fused.fuse_for_inference()
    assert type(fused.initial.act).__name__ == "PReLU"
    assert type(fused.b10.act1).__name__ == "FusedPReLU"
    fused.hybridize(backend="MKLDNN", static_alloc=True, static_shape=True)
    rng = np.random.default_rng(1)
    # the same shape twice (the cached, partitioned graph), then new batch sizes and crops, as
    # Segmenter feeds it: MXNet's subgraph pass once mixed up weights only after a shape change
    for shape in ((3, 1, 40, 56), (3, 1, 40, 56), (1, 1, 40, 56), (2, 1, 48, 32)):
        x = mx.nd.array(rng.random(shape))
        ref = net(x).asnumpy()
        out = fused(x).asnumpy()
        np.testing.assert_allclose(out, ref, atol=2e-4 * np.abs(ref).max())
        assert (out.argmax(1) == ref.argmax(1)).mean() > 0.999


def test_enet_skips_start_as_the_plain_enet(tmp_path):
    """Weights of the paper's ENet load into the one with skips (allow_missing) and compute the
    same output: the skips' output convolutions start at zero."""
    plain = _randomised_enet(skips=False)
    path = str(tmp_path / "plain.params")
    plain.save_parameters(path)
    skips = get_model_enet(True)
    skips.load_parameters(path, allow_missing=True)
    x = mx.nd.array(np.random.default_rng(2).random((2, 1, 32, 48)))
    np.testing.assert_allclose(skips(x).asnumpy(), plain(x).asnumpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["unet", "enet"])
def test_segmenter_inference_graph_matches_the_trained_network(name, tmp_path):
    """Segmenter's fused oneDNN graph gives the plain network's logits, across the changing batch
    sizes and crop shapes of a volume."""
    from engine.infer.inference import Segmenter
    from engine.nets.weights import write_model_dir

    net = _randomised_enet() if name == "enet" else _net(name)
    x0 = mx.nd.array(np.random.default_rng(3).random((1, 1, 32, 48)))
    net(x0)
    write_model_dir(tmp_path, net, name, version="t")
    seg = Segmenter(tmp_path)
    rng = np.random.default_rng(4)
    for shape in ((4, 1, 48, 64), (4, 1, 48, 64), (3, 1, 48, 64), (2, 1, 32, 80)):
        x = mx.nd.array(rng.random(shape))
        ref = net(x).asnumpy()
        out = seg.net(x).asnumpy()
        np.testing.assert_allclose(out, ref, atol=2e-4 * np.abs(ref).max())


def test_enet_trainable_prelu_gives_the_true_gradients_and_the_same_file(tmp_path):
    """Hybridized training uses TrainablePReLU: the same loss and the gradients of the imperative
    nn.PReLU network (which float64 finite differences confirm), where MXNet 1.9.1's hybridized
    PReLU halves some slopes' gradients; saved files are the same as nn.PReLU's."""
    from engine.train.loop import hybridize_for_training, seg_loss

    x = mx.nd.array(np.random.default_rng(0).random((2, 1, 48, 64)))
    y = mx.nd.array((np.random.default_rng(1).random((2, 48, 64)) * 4).astype(np.uint8))
    path = str(tmp_path / "enet.params")
    _randomised_enet(seed=3).save_parameters(path)

    def grads(fast: bool):
        net = get_model_enet(True)
        net.load_parameters(path)
        for block in net.collect_blocks():
            block.dropout = 0.0  # the same function in both runs
        if fast:
            hybridize_for_training(net)
        with mx.autograd.record():
            loss = seg_loss(mx.nd, net(x), y, [1.35, 17.18, 8.29, 12.42], 1.0)
        loss.backward()
        return float(loss.asscalar()), net, {k: p.grad().asnumpy() for k, p in
                                             net._collect_params_with_prefix().items() if p.grad_req != "null"}

    ref_loss, _, ref = grads(fast=False)  # imperative nn.PReLU
    loss, net, got = grads(fast=True)  # hybridized TrainablePReLU
    assert type(net.b10.act1).__name__ == "TrainablePReLU"
    assert abs(loss - ref_loss) < 1e-4 and set(got) == set(ref)
    for key in ref:
        scale = np.abs(ref[key]).max() + 1e-8
        assert np.abs(got[key] - ref[key]).max() < 2e-3 * scale, key
    net.save_parameters(str(tmp_path / "fast.params"))
    assert set(mx.nd.load(str(tmp_path / "fast.params"))) == set(mx.nd.load(path))


def test_partial_segmentation_reuses_the_volume_statistics_of_the_same_scan_only(tiny_model_dir):
    """A few slices of the scan already seen reuse its normalisation (percentiles over the
    whole volume); another scan, or the same array changed, is measured afresh."""
    from engine.infer.inference import SegmentConfig, Segmenter

    rng = np.random.default_rng(5)
    a = np.zeros((40, 48, 8), np.float32)
    a[6:34, 8:40, 1:7] = rng.uniform(50, 400, (28, 32, 6))
    seg = Segmenter(tiny_model_dir)
    one = SegmentConfig(slices=(3,))
    first = seg.segment(a, one).labels
    assert seg._work is not None
    np.testing.assert_array_equal(seg.segment(a, one).labels, first)
    b = a * 3.0 + np.where(a > 0, 500.0, 0.0).astype(np.float32)  # another scan, another scale
    np.testing.assert_array_equal(seg.segment(b, one).labels, Segmenter(tiny_model_dir).segment(b, one).labels)
    seg.segment(a, one)
    before = seg._work[1][1:]
    a[:20] *= 0.25  # the same array edited in place: measured afresh
    np.testing.assert_array_equal(seg.segment(a, one).labels, Segmenter(tiny_model_dir).segment(a, one).labels)
    assert seg._work[1][1:] != before


def test_enet_unpooling_is_max_unpooling_with_indices():
    """ENet's decoder puts each value back where its 2x2 window had its maximum, zeros elsewhere
    (max-unpooling with indices, which MXNet lacks), checked against a numpy reference."""
    from engine.nets.enet import _unpool

    rng = np.random.default_rng(3)
    pre = rng.standard_normal((2, 3, 8, 10)).astype(np.float32)  # continuous values: no ties
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    got = _unpool(mx.nd, mx.nd.array(x), mx.nd.array(pre)).asnumpy()
    ref = np.zeros_like(pre)
    for n in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(5):
                    win = pre[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                    di, dj = np.unravel_index(np.argmax(win), (2, 2))
                    ref[n, c, 2 * i + di, 2 * j + dj] = x[n, c, i, j]
    np.testing.assert_array_equal(got, ref)


def test_a_sparse_planes_slices_between_computed_ones_are_linear_interpolations_added_once():
    """Fusion's secondary planes run every 3rd slice; the slices between get the linear blend of
    their two computed neighbours, added to what the other planes gave; outside the computed range
    nothing is added."""
    from engine.infer.inference import _add_interpolated

    total = np.ones((2, 1, 1, 9), np.float32)
    ks = [1, 2, 5, 7]
    computed = np.zeros((4, 2, 1, 1), np.float32)  # slice-major: (computed slice, class, a, b)
    computed[:, 0, 0, 0] = [10, 20, 50, 30]
    computed[:, 1, 0, 0] = [1, 1, 4, 0]
    _add_interpolated(total, computed, ks)
    assert total[0, 0, 0].tolist() == pytest.approx([1, 11, 21, 31, 41, 51, 41, 31, 1])
    assert total[1, 0, 0].tolist() == pytest.approx([1, 2, 2, 3, 4, 5, 3, 1, 1])


def test_weight_average_follows_every_step_and_swaps_back(tmp_path):
    """tools/train_strip.py --ema: the average is updated after every optimiser step (fit's on_step),
    BatchNorm statistics included, with the ramped decay; swapping it in changes the network's output,
    swapping back restores the trained weights exactly, and its file loads into a fresh network."""
    from engine.nets import get_model
    from engine.train.loop import FitConfig, WeightAverage, fit

    net = get_model("unet", base=4, levels=2)
    net.initialize(mx.init.Xavier())
    rng = np.random.default_rng(3)
    x = rng.random((2, 1, 24, 40)).astype(np.float32)  # not square
    y = (x[:, 0] * 4).astype(np.uint8).clip(0, 3)
    net(mx.nd.array(x))
    net.hybridize(static_alloc=True)
    ema = WeightAverage(net, decay=0.6)
    names = [k for k in ema.params if k.endswith("weight")][:1] + [k for k in ema.params if "running_mean" in k][:1]
    assert len(names) == 2
    expect = {k: ema.params[k].data().asnumpy().copy() for k in names}

    def on_step(step):
        ema.update(step)
        d = min(0.6, (1.0 + ema.updates) / (10.0 + ema.updates))
        for k in names:
            expect[k] = d * expect[k] + (1 - d) * ema.params[k].data().asnumpy()

    fit(net, iter([(x, y)] * 6), FitConfig(steps=6, batch_size=2, lr=0.05, log_every=100), on_step=on_step)
    assert ema.updates == 6
    for k in names:
        np.testing.assert_allclose(ema.shadow[k].asnumpy(), expect[k], rtol=1e-4, atol=1e-6)
        assert not np.allclose(expect[k], ema.params[k].data().asnumpy())  # it lags the weights
    trained = net(mx.nd.array(x)).asnumpy()
    ema.save(tmp_path / "ema.params")
    ema.swap()
    averaged = net(mx.nd.array(x)).asnumpy()
    ema.swap()
    assert np.abs(averaged - trained).max() > 1e-4
    np.testing.assert_array_equal(net(mx.nd.array(x)).asnumpy(), trained)
    fresh = get_model("unet", base=4, levels=2)
    fresh.load_parameters(str(tmp_path / "ema.params"))
    np.testing.assert_allclose(fresh(mx.nd.array(x)).asnumpy(), averaged, rtol=1e-4, atol=1e-5)
