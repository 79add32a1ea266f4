"""The secondary planes' network (engine.infer.inference.SECONDARY_DIR): a model folder's smaller
network that runs the planes after the first, and the distillation that trains it."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from engine.core.mx_env import get_mx
from tests.models import untrained_enet

mx = get_mx()


@pytest.fixture(scope="module")
def model_with_secondary(tmp_path_factory):
    root = tmp_path_factory.mktemp("with_secondary")
    untrained_enet(root / "model", "prim-test", 11)
    untrained_enet(root / "model" / "secondary", "sec-test", 12, width=32, repeats=1)
    untrained_enet(root / "small", "sec-test", 12, width=32, repeats=1)  # the same network on its own
    plain = root / "plain"  # the model's own files only
    plain.mkdir()
    for name in ("model.json", "model.params"):
        shutil.copyfile(root / "model" / name, plain / name)
    return root


def _scan():
    """An asymmetric skull-stripped phantom (zero outside an off-centre ellipsoid) on a grid that is
    not a cube, with 1 x 1.2 x 1.5 mm voxels in LAS order."""
    rng = np.random.default_rng(5)
    shape = (36, 44, 30)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = ((z - 0.1) / 0.8) ** 2 + (y / 0.7) ** 2 + ((x + 0.15) / 0.75) ** 2 < 1
    vol = np.where(inside, 300 + 500 * (y > 0.1) + 200 * (z < -0.2) + rng.normal(0, 30, shape), 0)
    affine = np.diag([-1.0, 1.2, 1.5, 1.0])
    return vol.astype(np.float32), affine


def test_the_later_planes_are_run_by_the_secondary_network(model_with_secondary):
    """Fused with a secondary network = the model's axial probabilities averaged with the small
    network's coronal and sagittal ones; the first plane and single-plane runs are the model's own;
    secondary_network=False is the model without the folder."""
    from engine.batch import _row_version, version_label
    from engine.infer.inference import SegmentConfig, Segmenter

    root = model_with_secondary
    vol, aff = _scan()
    inside = vol > 0
    seg, small, plain = Segmenter(root / "model"), Segmenter(root / "small"), Segmenter(root / "plain")

    def probs(s, planes, **kw):
        cfg = SegmentConfig(planes=planes, secondary_stride=1, return_probabilities=True, **kw)
        return s.segment(vol, cfg, affine=aff).probabilities[:, inside]

    fused = probs(seg, ("axial", "coronal", "sagittal"))
    ref = (probs(plain, ("axial",)) + probs(small, ("coronal",)) + probs(small, ("sagittal",))) / 3
    np.testing.assert_allclose(fused, ref, atol=2e-5)
    own = probs(plain, ("axial", "coronal", "sagittal"))
    assert np.abs(own - fused).max() > 0.01  # the two networks differ: the test can tell them apart
    np.testing.assert_allclose(probs(seg, ("axial", "coronal", "sagittal"), secondary_network=False), own, atol=1e-6)
    np.testing.assert_allclose(probs(seg, ("coronal",)), probs(plain, ("coronal",)), atol=1e-6)
    # the first plane is always the model's own, and only coronal and sagittal planes (what the
    # small network was trained on) are ever given to it, whatever the order asked for
    order = probs(seg, ("coronal", "axial", "sagittal"))
    np.testing.assert_allclose(order, (probs(plain, ("coronal",)) + probs(plain, ("axial",))
                                       + probs(small, ("sagittal",))) / 3, atol=2e-5)
    # users see which networks ran: each result's model, and the batch table's model_version
    def model(**kw):
        return seg.segment(vol, SegmentConfig(secondary_stride=1, **kw), affine=aff).model

    assert model().endswith("; later planes sec-test)") and "sec-test" not in model(planes=("axial",))
    assert "sec-test" not in model(secondary_network=False) and "sec-test" not in seg.name
    assert "sec-test" not in model(slices=(10, 11), slice_plane="coronal")
    assert version_label(root / "model", "fp32") == "prim-test + sec-test" == _row_version(seg)
    assert version_label(root / "model", "int8") == "prim-test (INT8)"
    assert version_label(root / "plain", "fp32") == "prim-test" == _row_version(plain)


def test_a_fused_pass_with_the_secondary_network_takes_its_calibration(model_with_secondary, tmp_path):
    """The secondary's model.json class weights calibrate the fused passes it runs in; the model's
    own calibrate everything else (one plane; its own network in every plane)."""
    import json

    from engine.infer.inference import SegmentConfig, Segmenter

    root = model_with_secondary
    model = tmp_path / "calibrated"
    shutil.copytree(root / "model", model)
    for f, w in ((model / "model.json", [1.0, 0.5, 1.0, 1.0]), (model / "secondary" / "model.json", [1.0, 2.0, 1.0, 1.0])):
        meta = json.loads(f.read_text())
        meta["calibration"] = {"class_weights": w}
        f.write_text(json.dumps(meta))
    vol, aff = _scan()
    inside = vol > 0

    def probs(s, planes, **kw):
        cfg = SegmentConfig(planes=planes, secondary_stride=1, return_probabilities=True, **kw)
        return s.segment(vol, cfg, affine=aff).probabilities[:, inside]

    def calibrated(p, w):
        p = p * np.asarray(w, np.float32)[:, None]
        return p / p.sum(axis=0, keepdims=True)

    seg, plain, small = Segmenter(model), Segmenter(root / "plain"), Segmenter(root / "small")
    three = ("axial", "coronal", "sagittal")
    fused = (probs(plain, ("axial",)) + probs(small, ("coronal",)) + probs(small, ("sagittal",))) / 3
    np.testing.assert_allclose(probs(seg, three), calibrated(fused, [1, 2, 1, 1]), atol=2e-5)
    np.testing.assert_allclose(probs(seg, ("axial",)), calibrated(probs(plain, ("axial",)), [1, 0.5, 1, 1]), atol=2e-5)
    np.testing.assert_allclose(probs(seg, three, secondary_network=False),
                               calibrated(probs(plain, three), [1, 0.5, 1, 1]), atol=2e-5)


def test_a_damaged_secondary_network_is_an_error_naming_its_file(model_with_secondary, tmp_path):
    from engine.infer.inference import Segmenter
    from engine.nets.weights import WeightsError

    model = tmp_path / "model"
    shutil.copytree(model_with_secondary / "model", model)
    params = model / "secondary" / "model.params"
    data = bytearray(params.read_bytes())
    data[len(data) // 2] ^= 0xFF
    params.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="secondary/model.params: checksum mismatch"):
        Segmenter(model)


def test_a_secondary_network_distilled_from_other_weights_is_refused(model_with_secondary, tmp_path):
    """A model retrained after its secondary network was distilled: the pair is refused, naming the
    folder, instead of fusing two networks that no longer belong together."""
    import json

    from engine.infer.inference import Segmenter
    from engine.nets.weights import WeightsError

    model = tmp_path / "model"
    shutil.copytree(model_with_secondary / "model", model)
    meta_path = model / "secondary" / "model.json"
    meta = json.loads(meta_path.read_text())
    own = json.loads((model / "model.json").read_text())["sha256"]
    meta["training"] = {"distilled_from": {"teacher_sha256": own}}
    meta_path.write_text(json.dumps(meta))
    assert Segmenter(model).secondary is not None  # distilled from these very weights
    meta["training"]["distilled_from"]["teacher_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="secondary/model.json: this secondary planes' network was distilled"):
        Segmenter(model)


def test_the_qc_report_names_the_secondary_network(model_with_secondary):
    from engine.report import model_summary

    text = model_summary(model_with_secondary / "model")
    assert "coronal and sagittal planes by sec-test" in text
    assert "sec-test" not in model_summary(model_with_secondary / "plain")


def test_enet_width_and_depth_are_its_arch_kwargs(tmp_path):
    """A smaller ENet keeps the input/output contract and round-trips through a model folder."""
    from engine.infer.inference import load_network
    from engine.nets import count_parameters, get_model

    small = untrained_enet(tmp_path / "s", "s", 3, width=32, repeats=1)
    net, info = load_network(small, mx.cpu())
    x = mx.nd.array(np.random.default_rng(0).random((2, 1, 40, 56)))
    assert net(x).shape == (2, 4, 40, 56) and info.arch_kwargs == {"skips": True, "width": 32, "repeats": 1}
    full = get_model("enet")
    full.initialize()
    full(x)
    assert count_parameters(net) < count_parameters(full) / 3
    with pytest.raises(ValueError, match="multiple of 16"):
        get_model("enet", width=40)


def test_distill_loss_is_the_tempered_kl_and_its_gradient():
    """T^2 * mean over pixels of KL(softmax(t/T) || softmax(s/T)); its gradient in the student's
    logits is T * (softmax(s/T) - softmax(t/T)) / pixels; none reaches the teacher."""
    from engine.train.loop import distill_loss

    rng = np.random.default_rng(3)
    s_np, t_np = rng.normal(0, 3, (2, 4, 5, 6)), rng.normal(0, 3, (2, 4, 5, 6))
    T, pixels = 2.0, 2 * 5 * 6

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(t_np / T), softmax(s_np / T)
    want = T * T * float((p * (np.log(p) - np.log(q))).sum(axis=1).mean())
    s, t = mx.nd.array(s_np), mx.nd.array(t_np)
    s.attach_grad()
    t.attach_grad()
    with mx.autograd.record():
        loss = distill_loss(mx.nd, s, t, T)
    loss.backward()
    assert abs(float(loss.asscalar()) - want) < 1e-4 * max(1.0, abs(want))
    np.testing.assert_allclose(s.grad.asnumpy(), T * (q - p) / pixels, atol=1e-6)
    assert np.abs(t.grad.asnumpy()).max() == 0


def test_distillation_moves_the_student_towards_the_teacher():
    """Trained with a teacher, a student's outputs end nearer the teacher's than the same student
    trained on the same batches without one; distill_loss is 0 for equal logits."""
    from engine.nets import get_model
    from engine.train.loop import FitConfig, distill_loss, fit

    rng = np.random.default_rng(1)
    xs = rng.random((6, 4, 1, 32, 40)).astype(np.float32)
    ys = (rng.random((6, 4, 32, 40)) * 4).astype(np.uint8)
    mx.random.seed(4)
    teacher = get_model("enet")
    teacher.initialize(mx.init.Xavier(magnitude=2))
    x_eval = mx.nd.array(xs[0])
    t_logits = teacher(x_eval)
    same = distill_loss(mx.nd, t_logits, t_logits, 2.0).asscalar()
    assert abs(same) < 1e-5

    def student_kl(with_teacher: bool) -> float:
        mx.random.seed(9)
        net = get_model("enet", width=32, repeats=1)
        net.initialize(mx.init.Xavier())
        net(x_eval)
        cfg = FitConfig(steps=24, batch_size=4, lr=3e-3, log_every=1000, distill_weight=3.0, distill_temperature=2.0)
        batches = ((xs[i % 6], ys[i % 6]) for i in range(10**6))
        fit(net, batches, cfg, teacher=teacher if with_teacher else None)
        return float(distill_loss(mx.nd, net(x_eval), t_logits, 1.0).asscalar())

    assert student_kl(True) < 0.7 * student_kl(False)


def test_a_package_says_it_runs_the_models_own_network_in_every_plane(model_with_secondary, tmp_path):
    import json

    from engine.package import export_package

    pkg = export_package(model_with_secondary / "model", tmp_path / "pkg", fmt="mxnet", include_strip=False)
    note = json.loads((pkg / "package.json").read_text())["secondary_network"]
    assert note["carried"] is False and note["version"] == "sec-test" and "every plane" in note["note"]
    assert not (pkg / "secondary").exists()
    plain = export_package(model_with_secondary / "plain", tmp_path / "plain", fmt="mxnet", include_strip=False)
    assert json.loads((plain / "package.json").read_text())["secondary_network"] is None
