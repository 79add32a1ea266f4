"""Inference packages: export both networks in both formats, run the standalone runner in a clean
subprocess on a small synthetic scan and compare its mask with Segmenter's; tampering is refused."""
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.core.mx_env import get_mx
from tests.models import untrained_enet

mx = get_mx()

AFFINE = np.array([[-1.0, 0, 0, 40], [0, 1.2, 0, -30], [0, 0, 2.0, 5], [0, 0, 0, 1]])
RUNNER_IMPORTS = {"__future__", "argparse", "hashlib", "json", "sys", "warnings", "pathlib", "numpy",
                  "nibabel", "onnxruntime", "mxnet", "scipy"}  # scipy: optional (brain extraction)


def phantom(shape=(80, 72, 6), seed=0):
    """A head-like ellipse of CSF / grey / white rings in the middle of a larger field (so the
    foreground crop is exercised), one empty slice, noise in the background."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    labels = np.zeros(shape, np.uint8)
    for k in range(shape[2]):
        s = 0.45 + 0.05 * np.sin(k)
        r = np.hypot(x / s, y / (1.1 * s)) + 0.08 * np.sin(5 * np.arctan2(y, x) + k)
        labels[..., k] = np.select([r < 0.5, r < 0.75, r < 0.92], [3, 2, 1], 0)
    labels[..., 0] = 0
    vol = np.array([0, 60, 120, 180], np.float32)[labels] + rng.normal(0, 8, shape).astype(np.float32)
    vol[labels == 0] = np.abs(rng.normal(0, 1, int((labels == 0).sum())))
    return np.clip(vol, 0, None).astype(np.float32)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    nib.save(nib.Nifti1Image(phantom(), AFFINE), str(path))
    return path


@pytest.fixture(scope="module")
def enet_dir(tmp_path_factory):
    """A small untrained ENet of this module's own draw. ENet's max-unpooling keeps every position
    that equals its 2x2 window's maximum (engine/nets/enet.py `_unpool`), so where a window's values
    nearly tie, ONNX Runtime's and MXNet's last-bit rounding can unpool to different positions: with
    conftest's shared tiny model, whose weights depend on what moved mx.random before, one draw in
    twelve changed one plane's logits by ~30 on a few dozen pixels, and 4 decisive voxels. The
    runner is not at fault there, so the draw is fixed, as unet_dir's is."""
    return untrained_enet(tmp_path_factory.mktemp("enet_model"), "tiny-test", seed=1986, magnitude=6,
                          record_arch=False)


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    """A small untrained U-Net; its model.json carries arch_kwargs the export must honour."""
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir

    kw = {"base": 8, "levels": 3}
    mx.random.seed(1984)  # the decisive-margin check below depends on the draw: fix it, whatever ran before
    net = get_model("unet", **kw)
    net.initialize(mx.init.Xavier(magnitude=6))
    net(mx.nd.zeros((1, 1, 16, 16)))
    d = tmp_path_factory.mktemp("unet_model")
    write_model_dir(d, net, "unet", kw, version="tiny-unet")
    return d


@pytest.fixture(scope="module")
def packages(tmp_path_factory, enet_dir, unet_dir):
    """(arch, format) -> package folder; the U-Net ONNX one is made through `brainseg export`."""
    from engine.cli import main
    from engine.package import export_package

    root = tmp_path_factory.mktemp("packages")
    out = {}
    for arch, model in (("enet", enet_dir), ("unet", unet_dir)):
        for fmt in ("onnx", "mxnet"):
            d = root / f"{arch}-{fmt}"
            if (arch, fmt) == ("unet", "onnx"):
                assert main(["export", "--format", fmt, str(model), "-o", str(d)]) == 0
            else:
                export_package(model, d, fmt)
            out[arch, fmt] = d
    return out


PIR_AFFINE = np.array([[0, 0, -1.0, 30], [-1.0, 0, 0, 40], [0, -1.5, 0, 20], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def pir_scan(tmp_path_factory):
    """The phantom stored sagittally: array axes Posterior, Inferior, Right (1.5 mm along I)."""
    path = tmp_path_factory.mktemp("pir") / "pir.nii.gz"
    vol = np.transpose(phantom(), (1, 2, 0))[::-1, ::-1, :]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol), PIR_AFFINE), str(path))
    return path


def _reference(seg, path):
    """Segmenter's labels on a scan file and the top-2 margin of its fused class probabilities."""
    img = nib.load(str(path))
    vol = np.asarray(img.dataobj, dtype=np.float32)
    from engine.infer.inference import SegmentConfig

    res = seg.segment(vol, SegmentConfig(return_probabilities=True), affine=img.affine)
    top2 = np.sort(res.probabilities, axis=0)[-2:]
    return res.labels, top2[1] - top2[0]


@pytest.fixture(scope="module")
def references(scan, pir_scan, enet_dir, unet_dir):
    """arch -> Segmenter's labels and probability margins (the scan has 1 x 1.2 x 2 mm voxels:
    both go through the resampling and the three-plane fusion)."""
    from engine.infer.inference import Segmenter

    out = {}
    for arch, model_dir in (("enet", enet_dir), ("unet", unet_dir)):
        seg = Segmenter(model_dir)
        out[arch] = _reference(seg, scan)
        if arch == "enet":
            out["enet-pir"] = _reference(seg, pir_scan)
    return out


# One isolated interpreter (-I: no PYTHONPATH, no script folder on the path), started outside the
# repository, runs each package's own segment_package.py as __main__: the ONNX packages first, and
# it reports whether they pulled in mxnet or anything of BrainSeg. One process for all four keeps
# the test fast (a fresh MXNet import costs seconds on a busy machine).
RUN_ALL = """
import json, runpy, sys
jobs, report = json.loads(sys.argv[1]), {}
for key, argv in jobs:
    sys.argv, report[key] = argv, {"rc": None}
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        report[key]["rc"] = exc.code
    report[key]["mxnet_loaded"] = "mxnet" in sys.modules
    report[key]["brainseg_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("engine", "brainseg_gui"))
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def masks(packages, scan, pir_scan, tmp_path_factory):
    """(arch, fmt) -> (mask path, report of the run)."""
    out_dir = tmp_path_factory.mktemp("masks")
    jobs = [(f"{arch}-{fmt}", [str(pkg / "segment_package.py"), str(pkg), str(scan), "-o",
                                str(out_dir / f"{arch}-{fmt}.nii.gz")])
            for (arch, fmt), pkg in sorted(packages.items(), key=lambda kv: kv[0][1] != "onnx")]
    jobs.insert(1, ("enet-onnx-pir", [str(packages["enet", "onnx"] / "segment_package.py"),
                                      str(packages["enet", "onnx"]), str(pir_scan), "-o",
                                      str(out_dir / "enet-onnx-pir.nii.gz")]))
    # engine.core.mx_env exported OMP_WAIT_POLICY=ACTIVE to this process's environment; spinning OpenMP
    # threads on shared cores make a small ENet 50x slower, so the child waits passively.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    res = subprocess.run([sys.executable, "-I", "-c", RUN_ALL, json.dumps(jobs)], capture_output=True,
                         text=True, cwd=out_dir, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.split("REPORT ", 1)[1])
    out = {key: (out_dir / f"{key[0]}-{key[1]}.nii.gz", report[f"{key[0]}-{key[1]}"]) for key in packages}
    out["enet-onnx-pir"] = (out_dir / "enet-onnx-pir.nii.gz", report["enet-onnx-pir"])
    return out


@pytest.mark.parametrize("arch", ["enet", "unet"])
@pytest.mark.parametrize("fmt", ["onnx", "mxnet"])
def test_standalone_runner_matches_segmenter(packages, masks, references, arch, fmt):
    pkg = packages[arch, fmt]
    spec = json.loads((pkg / "package.json").read_text())
    assert spec["backend"] == fmt and spec["precision"] == "fp32"
    assert spec["model"]["multiple"] == (8 if arch == "enet" else 4)  # U-Net levels=3 from arch_kwargs
    assert spec["preprocess"]["pad"]["multiple"] == spec["model"]["multiple"]
    assert spec["export_check"]["label_agreement"] >= 0.999
    manifest = json.loads((pkg / "MANIFEST.json").read_text())["files"]
    assert set(manifest) == {p.name for p in pkg.iterdir()} - {"MANIFEST.json"}

    path, run = masks[arch, fmt]
    assert run["rc"] == 0 and run["brainseg_loaded"] == []
    if fmt == "onnx":
        assert not run["mxnet_loaded"]  # numpy + onnxruntime + nibabel only
    img = nib.load(str(path))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, AFFINE)
    got = np.asanyarray(img.dataobj)
    ref, margin = references[arch]
    assert got.shape == ref.shape
    assert (got == ref).mean() >= 0.999
    decisive = margin > 1e-3
    # Untrained nets: U-Net gives exactly tied (all-zero) logits where the input is zero (both
    # sides then pick class 0); elsewhere the margins are decisive.
    assert decisive.mean() > 0.8
    assert (got[decisive] == ref[decisive]).all()


def test_standalone_runner_matches_segmenter_on_a_sagittally_stored_scan(masks, references):
    """The runner reorients and resamples as the engine does: a PIR scan with 1.5 mm voxels gives
    Segmenter's mask, on the scan's own grid and affine."""
    path, run = masks["enet-onnx-pir"]
    assert run["rc"] == 0 and not run["mxnet_loaded"]
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, PIR_AFFINE)
    got = np.asanyarray(img.dataobj)
    ref, margin = references["enet-pir"]
    assert got.shape == ref.shape
    decisive = margin > 1e-3
    assert decisive.mean() > 0.8
    assert (got[decisive] == ref[decisive]).all()


def test_onnx_export_has_dynamic_axes_and_reshaped_prelu_slopes(packages):
    import onnx

    model = onnx.load(str(packages["enet", "onnx"] / "network.onnx"))
    assert [i.name for i in model.graph.input] == ["data"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
    assert model.opset_import[0].version == 13
    inits = {t.name: t for t in model.graph.initializer}
    slopes = [inits[n.input[1]] for n in model.graph.node if n.op_type == "PRelu"]
    assert len(slopes) == 82 and all(list(s.dims)[1:] == [1, 1] for s in slopes)
    assert not any(n.op_type == "Dropout" for n in model.graph.node)


def test_runner_imports_nothing_from_brainseg():
    from engine.package import RUNNER

    tree = ast.parse(RUNNER.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names <= RUNNER_IMPORTS, names - RUNNER_IMPORTS
    # small enough to read: it repeats conform.py, and strip.py for the brain extractor, too
    assert len(RUNNER.read_text().splitlines()) < 520


@pytest.mark.parametrize("damage", ["network", "package.json", "missing"])
def test_tampered_package_is_refused(packages, scan, tmp_path, capsys, damage):
    from engine.package import load_runner, verify_package

    pkg = tmp_path / "pkg"
    shutil.copytree(packages["unet", "onnx"], pkg)
    if damage == "network":
        with open(pkg / "network.onnx", "ab") as fh:
            fh.write(b"\0")
    elif damage == "package.json":
        spec = json.loads((pkg / "package.json").read_text())
        spec["preprocess"]["normalise"]["clip"] = [0.0, 30.0]
        (pkg / "package.json").write_text(json.dumps(spec))
    else:
        (pkg / "classes.json").unlink()
    name = {"network": "network.onnx", "package.json": "package.json", "missing": "classes.json"}[damage]
    message = "missing" if damage == "missing" else "checksum mismatch"
    with pytest.raises(ValueError, match=f"{name}.*{message}"):
        verify_package(pkg)
    runner = load_runner(pkg / "segment_package.py")
    assert runner.main([str(pkg), str(scan), "-o", str(tmp_path / "m.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert f"{name}: " in err and message in err and not (tmp_path / "m.nii.gz").exists()


def test_export_errors_are_one_line(tmp_path, unet_dir, capsys):
    from engine.cli import main

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert main(["export", str(unet_dir), "-o", str(busy)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "p")]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() and [p.name for p in tmp_path.iterdir()] == ["busy"]


def test_model_name_resolves_to_the_active_version(tmp_path, monkeypatch):
    from engine.nets.weights import shipped_model_dir
    from engine.package import resolve_model_dir

    monkeypatch.setenv("BRAINSEG_HOME", str(tmp_path))
    assert resolve_model_dir("enet") == shipped_model_dir("enet")
    assert resolve_model_dir("UNet") == shipped_model_dir("unet")


@pytest.mark.parametrize("fmt", ["mxnet", "onnx"])
def test_int8_package_runs(unet_dir, scan, tmp_path, fmt):
    """INT8 packages (the runner in-process here: its loader is the FP32 one, tested above)."""
    from engine.package import export_package, load_runner

    if fmt == "onnx":
        pytest.importorskip("ml_dtypes", reason="onnxruntime.quantization needs ml_dtypes")
    vol = np.asarray(nib.load(str(scan)).dataobj, dtype=np.float32)
    pkg = export_package(unet_dir, tmp_path / "pkg", fmt, int8=True, calib_volume=vol)
    spec = json.loads((pkg / "package.json").read_text())
    assert spec["precision"] == "int8" and spec["quantization"]["calibration_slices"] == 5
    out = tmp_path / "mask.nii.gz"
    assert load_runner(pkg / "segment_package.py").main([str(pkg), str(scan), "-o", str(out)]) == 0
    got = np.asanyarray(nib.load(str(out)).dataobj)
    assert got.shape == vol.shape and got.dtype == np.uint8 and got.max() <= 3


def test_runner_repeats_sparse_view_aggregation(enet_dir, scan, tmp_path, monkeypatch):
    """With secondary_stride 2 recorded in the package, the runner skips and interpolates the same
    coronal and sagittal slices as Segmenter."""
    import engine.infer.inference as inference
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.package import export_package, load_runner

    monkeypatch.setitem(inference.SECONDARY_STRIDE, "enet", 2)
    pkg = export_package(enet_dir, tmp_path / "pkg", "onnx")
    assert json.loads((pkg / "package.json").read_text())["secondary_stride"] == 2
    out = tmp_path / "mask.nii.gz"
    assert load_runner(pkg / "segment_package.py").main([str(pkg), str(scan), "-o", str(out)]) == 0
    img = nib.load(str(scan))
    res = Segmenter(enet_dir).segment(np.asarray(img.dataobj, np.float32),
                                            SegmentConfig(return_probabilities=True), affine=img.affine)
    top2 = np.sort(res.probabilities, axis=0)[-2:]
    decisive = (top2[1] - top2[0]) > 1e-3
    got = np.asanyarray(nib.load(str(out)).dataobj)
    assert decisive.mean() > 0.8 and (got[decisive] == res.labels[decisive]).all()


def test_runner_applies_the_models_calibration(enet_dir, scan, tmp_path):
    """A model whose model.json carries calibration.class_weights: the package records them and its
    runner gives the app's calibrated labels (not the uncalibrated ones)."""
    import shutil

    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.package import export_package, load_runner

    cal = tmp_path / "calibrated"
    shutil.copytree(enet_dir, cal)
    meta = json.loads((cal / "model.json").read_text())
    meta["calibration"] = {"class_weights": [1.0, 3.0, 1.0, 0.5]}
    (cal / "model.json").write_text(json.dumps(meta))
    pkg = export_package(cal, tmp_path / "pkg", "onnx")
    assert json.loads((pkg / "package.json").read_text())["calibration"]["class_weights"] == [1.0, 3.0, 1.0, 0.5]
    out = tmp_path / "mask.nii.gz"
    assert load_runner(pkg / "segment_package.py").main([str(pkg), str(scan), "-o", str(out)]) == 0
    img = nib.load(str(scan))
    vol = np.asarray(img.dataobj, np.float32)
    res = Segmenter(cal).segment(vol, SegmentConfig(return_probabilities=True), affine=img.affine)
    plain = Segmenter(enet_dir).segment(vol, SegmentConfig(), affine=img.affine)
    assert (res.labels != plain.labels).mean() > 0.01  # the weights matter on this scan
    top2 = np.sort(res.probabilities, axis=0)[-2:]
    decisive = (top2[1] - top2[0]) > 1e-3
    got = np.asanyarray(nib.load(str(out)).dataobj)
    assert decisive.mean() > 0.8 and (got[decisive] == res.labels[decisive]).all()


# ----------------------------------------------------------------------------- brain extraction
def _fill(param, fill):
    a = np.zeros(param.shape, np.float32)
    fill(a)
    param.set_data(mx.nd.array(a))


@pytest.fixture(scope="module")
def strip_dir(tmp_path_factory):
    """A tiny extractor (the shipped U-Net's shape at base 4) made to find a brain-sized piece of the
    phantom head: its top level passes J = a mix of the three channels and one in-plane neighbour
    (asymmetric, so channel order and slice layout matter) to the head, which gives the brain class
    J - 10 relu(J - 0.85) - 0.45 (grey and white matter, marrow: in; CSF, bone, scalp, air: out), plus
    a little of the random deeper levels. An untrained one marks most of the field of view, which
    is then not a skull-stripped scan and the tissue network labels outside the mask, in the app too.
    Its model.json sets its own threshold (STRIP_T, not the default 0.5), as the shipped one does."""
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir

    mx.random.seed(18)
    kw = {"classes": 2, "base": 4, "levels": 5}
    net = get_model("unet", **kw)
    net.initialize(mx.init.Xavier(magnitude=6))
    net(mx.nd.zeros((1, 3, 32, 32)))

    def mix(a):
        for o in (0, 1):
            a[o, 0, 1, 1], a[o, 1, 1, 1], a[o, 2, 1, 1], a[o, 1, 1, 2] = 0.2, 0.5, 0.1, 0.2

    def identity(a, channels=(0, 1)):
        for c in channels:
            a[c, c, 1, 1] = 1.0

    def merge(a):
        identity(a)
        a[2, 4:, 1, 1] = 0.005  # the deeper levels (up-sampled), a little

    def head(a):
        a[1, 0], a[1, 1], a[1, 2] = 1.0, -10.0, 1.0

    _fill(net.down[0][0].conv.weight, mix)
    net.down[0][0].bn.running_mean.set_data(mx.nd.array([0.0, 0.85, 0.0, 0.0]))  # channel 1: J - 0.85
    _fill(net.down[0][1].conv.weight, identity)
    _fill(net.merge[-1][0].conv.weight, merge)
    _fill(net.merge[-1][1].conv.weight, lambda a: identity(a, (0, 1, 2)))
    _fill(net.head.weight, head)
    _fill(net.head.bias, lambda a: a.__setitem__(1, -0.45))
    d = tmp_path_factory.mktemp("strip_model")
    write_model_dir(d, net, "unet", kw, version="tiny-strip", threshold=STRIP_T)
    return d


STRIP_T = 0.56  # the tiny extractor's own threshold (model.json): the runner must follow it


def _head(crop=6, zooms=(1.2, 1.2, 1.5)):
    """The phantom head of test_strip at 2/5 of its size, cropped so that the scalp touches the
    left, right, front and back faces (skull found): quick to segment."""
    from tests.engine.test_strip import las, phantom_head

    head, _ = phantom_head(shape=(60, 70, 64), zooms=(3.0, 3.0, 3.0))
    head = np.ascontiguousarray(head[crop:head.shape[0] - crop, crop:head.shape[1] - crop])
    return head, las(zooms, head.shape)


@pytest.fixture(scope="module")
def skull_scan(tmp_path_factory):
    path = tmp_path_factory.mktemp("skull") / "head.nii.gz"
    nib.save(nib.Nifti1Image(*_head()), str(path))
    img = nib.load(str(path))
    return path, np.asarray(img.dataobj, dtype=np.float32), img.affine


@pytest.fixture(scope="module")
def strip_packages(tmp_path_factory, enet_dir, strip_dir):
    """"onnx" and "nostrip" through `brainseg export`, "mxnet" through export_package."""
    from engine.cli import main
    from engine.package import export_package

    root = tmp_path_factory.mktemp("strip_packages")
    assert main(["export", "--format", "onnx", "--strip-model", str(strip_dir), str(enet_dir),
                 "-o", str(root / "onnx")]) == 0
    assert main(["export", "--no-strip", str(enet_dir), "-o", str(root / "nostrip")]) == 0
    export_package(enet_dir, root / "mxnet", "mxnet", strip_model=strip_dir)
    return {k: root / k for k in ("onnx", "nostrip", "mxnet")}


@pytest.fixture(scope="module")
def strip_reference(skull_scan, strip_dir, enet_dir):
    """The app on the skull scan: BrainExtractor's result, its uncleaned mask (probability > STRIP_T),
    and Segmenter's labels and margins on the masked scan and on the scan as it is."""
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.infer.scan import decide_strip, masked_scan
    from engine.infer.strip import BrainExtractor, StripGrid

    _, vol, aff = skull_scan
    assert decide_strip(vol, aff, "auto").run  # a head with its skull on: auto extracts
    ex = BrainExtractor(strip_dir)
    assert ex.threshold == STRIP_T
    res = ex.extract(vol, aff)
    native = StripGrid.for_scan(vol, aff).to_scan(res.probability, vol.shape, aff)
    raw = native > STRIP_T
    # the model's threshold matters on this head: a runner at 0.5 would give another mask
    assert (native > 0.5).sum() > 1.05 * raw.sum(), ((native > 0.5).sum(), raw.sum())
    seg = Segmenter(enet_dir)
    out = {"strip": res, "raw": raw}
    for key, v in (("masked", masked_scan(vol, res.mask)), ("off", vol)):
        r = seg.segment(v, SegmentConfig(return_probabilities=True), affine=aff)
        top2 = np.sort(r.probabilities, axis=0)[-2:]
        out[key] = (r.labels, top2[1] - top2[0])
    return out


# Like RUN_ALL, with each run's stdout and stderr, and scipy made unimportable for the runs that ask.
RUN_STRIP = """
import contextlib, io, json, runpy, sys
jobs, report = json.loads(sys.argv[1]), {}
for key, argv, no_scipy in jobs:
    if no_scipy:
        sys.modules["scipy"] = None  # as if scipy were not installed
    sys.argv, out, err, rc = argv, io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exc:
            rc = exc.code
    report[key] = {"rc": rc, "out": out.getvalue(), "err": err.getvalue(), "mxnet_loaded": "mxnet" in sys.modules,
                   "brainseg_loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("engine", "brainseg_gui"))}
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def strip_runs(strip_packages, skull_scan, tmp_path_factory):
    """The ONNX package's runner in a clean interpreter: key -> (report, output folder)."""
    out = tmp_path_factory.mktemp("strip_runs")
    pkg, scan = strip_packages["onnx"], str(skull_scan[0])
    run = [str(pkg / "segment_package.py"), str(pkg), scan]
    jobs = [("auto", run + ["-o", str(out / "seg.nii.gz"), "--mask-out", str(out / "brain.nii.gz")], False),
            ("off", run + ["-o", str(out / "seg_off.nii.gz"), "--strip", "off"], False),
            ("noscipy", run + ["-o", str(out / "seg_ns.nii.gz"), "--mask-out", str(out / "brain_ns.nii.gz")], True)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    res = subprocess.run([sys.executable, "-I", "-c", RUN_STRIP, json.dumps(jobs)], capture_output=True,
                         text=True, cwd=out, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.split("REPORT ", 1)[1]), out


def _dice(a, b):
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _read(path):
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def test_package_carries_the_brain_extractor(strip_packages):
    import onnx

    from engine.package import verify_package

    for fmt in ("onnx", "mxnet"):
        pkg = strip_packages[fmt]
        spec = verify_package(pkg)
        s = spec["strip"]
        assert s["model"]["version"] == "tiny-strip" and s["precision"] == "fp32"
        assert s["network"]["channels"] == 3 and s["slices"]["context"] == 1
        assert s["slices"]["plane_axis"] == {"sagittal": 0, "coronal": 1, "axial": 2}
        assert s["grid"]["size"] == 128 and s["grid"]["voxel_mm"] == 2.0
        assert s["intensity"]["percentile"] == 98 and s["intensity"]["clip"] == [0.0, 2.0]
        assert s["threshold"] == STRIP_T and s["export_check"]["label_agreement"] >= 0.999
        files = set(json.loads((pkg / "MANIFEST.json").read_text())["files"])
        assert set(s["network"]["files"].values()) | {"strip-model.json"} <= files
        rules = spec["strip_decision"]
        assert rules["skull_present"]["max_ml"] == 2300 and rules["skull_present"]["min_edges"] == 3
        assert spec["tissue_inside_mask"]["zero_fraction"] == 0.2
    model = onnx.load(str(strip_packages["onnx"] / "strip.onnx"))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"] and model.graph.output[0].name == "logits"
    bare = strip_packages["nostrip"]
    spec = json.loads((bare / "package.json").read_text())
    assert spec["strip"] is None and "skull_present" in spec["strip_decision"]
    assert not [p.name for p in bare.iterdir() if p.name.startswith("strip")]


def test_runner_strips_a_skull_scan_as_the_app_does(strip_runs, skull_scan, strip_reference):
    """--strip auto (the default) on a head with its skull on: the package's brain mask is
    BrainExtractor's, nothing outside it is labelled, every voxel inside is a tissue, and the labels
    are Segmenter's on the masked scan; numpy + nibabel + onnxruntime (+ scipy) only."""
    report, out = strip_runs
    run = report["auto"]
    assert run["rc"] == 0, run["err"]
    assert run["brainseg_loaded"] == [] and not run["mxnet_loaded"]
    ref = strip_reference["strip"]
    assert "stripped: skull found: brain extracted" in run["out"]
    assert f"{ref.volume_ml:,.0f} mL intracranial" in run["out"]
    brain, img = _read(out / "brain.nii.gz")
    assert img.get_data_dtype() == np.uint8 and set(np.unique(brain)) <= {0, 1}
    np.testing.assert_allclose(img.affine, skull_scan[2])
    brain = brain > 0
    assert 0.05 < ref.mask.mean() < 0.6  # a brain-sized mask: the masked scan is skull-stripped
    assert _dice(brain, ref.mask) >= 0.98 and (brain != ref.mask).mean() < 1e-3
    seg, _ = _read(out / "seg.nii.gz")
    assert not seg[~brain].any() and (seg[brain] > 0).all()
    labels, margin = strip_reference["masked"]
    decisive = margin > 1e-3
    assert decisive.mean() > 0.8 and (seg[decisive] == labels[decisive]).mean() >= 0.999


def test_runner_with_strip_off_segments_as_before(strip_runs, strip_reference):
    report, out = strip_runs
    run = report["off"]
    assert run["rc"] == 0, run["err"]
    assert "not stripped: brain extraction off" in run["out"]
    seg, _ = _read(out / "seg_off.nii.gz")
    labels, margin = strip_reference["off"]
    decisive = margin > 1e-3
    # (about 1 in 10,000 decisive voxels of this 1.2 x 1.2 x 1.5 mm scan differ from Segmenter's
    # with or without this change: the runner's own geometry, which the tests above pin down)
    assert decisive.mean() > 0.8 and (seg[decisive] == labels[decisive]).mean() >= 0.999
    assert seg[~strip_reference["strip"].mask].any()  # the scalp gets labels: nothing was masked


def test_runner_strips_without_scipy(strip_runs, strip_reference):
    """Without scipy the resampling is numpy's (the same mask before cleaning) and the runner says
    that the mask is not cleaned."""
    report, out = strip_runs
    run = report["noscipy"]
    assert run["rc"] == 0, run["err"]
    assert "scipy is not installed" in run["err"] and "stripped: skull found" in run["out"]
    brain = _read(out / "brain_ns.nii.gz")[0] > 0
    raw = strip_reference["raw"]
    assert _dice(brain, raw) >= 0.98 and (brain != raw).mean() < 1e-3
    seg, _ = _read(out / "seg_ns.nii.gz")
    assert not seg[~brain].any()


def test_runner_numpy_resampling_matches_scipy():
    from scipy import ndimage as ndi

    from engine.package import RUNNER, load_runner

    runner = load_runner(RUNNER)
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, (9, 11, 7)).astype(np.float32)
    m = np.eye(4)
    m[:3, :3] = [[0.6, 0.1, 0.0], [-0.05, 0.7, 0.2], [0.1, 0.0, -0.5]]
    m[:3, 3] = [-0.7, 0.3, 6.2]
    want = runner.affine_resample(a, m, (14, 13, 12), ndi)
    got = runner.affine_resample(a, m, (14, 13, 12), None)
    assert (want > 0).mean() > 0.3
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_runner_decides_as_the_app(strip_packages, tmp_path):
    """--strip auto's decision (skull found / already skull-stripped / no skull) is decide_strip's,
    on scans stored in several ways; a package without the extractor says it has none."""
    from engine.infer.scan import decide_strip, masked_scan
    from tests.engine.test_strip import las, phantom_head

    head, aff = _head()
    big, ic = phantom_head(shape=(60, 70, 64), zooms=(3.0, 3.0, 3.0))
    sag = np.ascontiguousarray(np.transpose(head, (1, 2, 0)))  # axes A, S, L
    sag_aff = np.zeros((4, 4))
    sag_aff[1, 0], sag_aff[2, 1], sag_aff[0, 2], sag_aff[3, 3] = 1.2, 1.5, -1.2, 1.0
    # air above and below, stored with axes S, A, L: the faces that count are array axes 2 and 1
    sal = np.ascontiguousarray(np.transpose(np.pad(head, ((0, 0), (0, 0), (8, 8))), (2, 1, 0)))
    sal_aff = np.zeros((4, 4))
    sal_aff[2, 0], sal_aff[1, 1], sal_aff[0, 2], sal_aff[3, 3] = 1.5, 1.2, -1.2, 1.0
    scans = {"cropped head": (head, aff), "whole head": (big, las((3, 3, 3), big.shape)),
             "stored sagittally": (sag, sag_aff), "stored S-A-L": (sal, sal_aff), "uncropped small head": _head(crop=0),
             "skull-stripped": (masked_scan(big, ic), las((3, 3, 3), big.shape))}
    runner = load_runner_of(strip_packages["onnx"])
    spec = json.loads((strip_packages["onnx"] / "package.json").read_text())
    bare = json.loads((strip_packages["nostrip"] / "package.json").read_text())
    seen = set()
    for name, (vol, a) in scans.items():
        want = decide_strip(vol, a, "auto")
        assert runner.strip_decision(vol, a, spec, "auto") == (want.run, want.reason), name
        seen.add(want.reason)
        run, reason = runner.strip_decision(vol, a, bare, "auto")
        assert not run and (want.reason if not want.run else "no brain extractor") in reason, name
    assert len(seen) == 3  # skull found, already skull-stripped, no skull found
    for mode in ("on", "off"):
        assert runner.strip_decision(head, aff, spec, mode) == (mode == "on", decide_strip(head, aff, mode).reason)


def load_runner_of(pkg):
    from engine.package import load_runner

    return load_runner(pkg / "segment_package.py")


def test_package_without_the_extractor_says_so(strip_packages, skull_scan, tmp_path, capsys):
    pkg = strip_packages["nostrip"]
    runner = load_runner_of(pkg)
    scan = str(skull_scan[0])
    assert runner.main([str(pkg), scan, "-o", str(tmp_path / "seg.nii.gz")]) == 0
    assert "not stripped: skull found, but this package carries no brain extractor" in capsys.readouterr().out
    assert runner.main([str(pkg), scan, "-o", str(tmp_path / "x.nii.gz"), "--strip", "on"]) == 2
    assert "carries no brain extractor" in capsys.readouterr().err
    assert runner.main([str(pkg), scan, "-o", str(tmp_path / "y.nii.gz"), "--mask-out", str(tmp_path / "b.nii.gz")]) == 2
    assert "--mask-out: no brain mask was made" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists() and not (tmp_path / "b.nii.gz").exists()


def test_mxnet_package_strips_as_the_app_does(strip_packages, skull_scan, strip_reference, tmp_path, capsys):
    pkg = strip_packages["mxnet"]
    out, brain = tmp_path / "seg.nii.gz", tmp_path / "brain.nii.gz"
    assert load_runner_of(pkg).main([str(pkg), str(skull_scan[0]), "-o", str(out), "--mask-out", str(brain)]) == 0
    assert "stripped: skull found" in capsys.readouterr().out
    got, ref = _read(brain)[0] > 0, strip_reference["strip"].mask
    assert _dice(got, ref) >= 0.98 and (got != ref).mean() < 1e-3
    assert not _read(out)[0][~got].any()


def test_strip_model_choice(tmp_path, strip_dir, monkeypatch):
    """Default: the shipped extractor when its weights are installed, else none; --strip-model DIR;
    --no-strip. INT8 leaves the extractor FP32."""
    import engine.nets.weights as weights
    from engine.package import resolve_strip_model

    shipped = tmp_path / "weights" / "strip"
    shipped.mkdir(parents=True)
    (shipped / "NOTICE").write_text("weights still training")
    monkeypatch.setattr(weights, "shipped_model_dir", lambda arch: tmp_path / "weights" / arch)
    assert resolve_strip_model() is None
    shutil.copytree(strip_dir, shipped, dirs_exist_ok=True)
    assert resolve_strip_model() == shipped
    assert resolve_strip_model(strip_dir) == strip_dir
    assert resolve_strip_model(include=False) is None
    with pytest.raises(ValueError, match="choose one"):
        resolve_strip_model(strip_dir, include=False)
    from engine.nets.weights import WeightsError

    with pytest.raises(WeightsError):
        resolve_strip_model(tmp_path / "nope")


def test_int8_package_keeps_the_extractor_fp32(unet_dir, strip_dir, scan, tmp_path):
    from engine.package import export_package

    vol = np.asarray(nib.load(str(scan)).dataobj, dtype=np.float32)
    pkg = export_package(unet_dir, tmp_path / "pkg", "mxnet", int8=True, calib_volume=vol, strip_model=strip_dir)
    spec = json.loads((pkg / "package.json").read_text())
    assert spec["precision"] == "int8" and spec["strip"]["precision"] == "fp32"
    assert spec["strip"]["export_check"]["label_agreement"] >= 0.999  # the FP32 extractor, unchanged
    assert "int8" not in (pkg / "strip-symbol.json").read_text().lower()


def test_packages_carry_no_scan_names_or_home_paths(enet_dir, tmp_path):
    """Issue #20: packages carried the calibration scan's file name and the user's home path."""
    import shutil

    from engine.package import export_package

    model = tmp_path / "enet-v001"
    shutil.copytree(enet_dir, model)
    meta = json.loads((model / "model.json").read_text())
    meta.update({"parent_dir": str(Path.home() / "studies" / "Doe_Jane" / "enet-shipped-4"),
                 "notes": {"trained_on": str(tmp_path / "Doe_Jane_T1.nii.gz")}})
    (model / "model.json").write_text(json.dumps(meta))
    calib = tmp_path / "Doe_Jane_T1.nii.gz"
    vol = np.zeros((24, 28, 12), np.float32)
    vol[4:20, 4:24, 2:10] = 100
    nib.save(nib.Nifti1Image(vol, np.diag([-1.0, 1, 1, 1])), str(calib))
    pkg = export_package(model, tmp_path / "pkg", "mxnet", int8=True, calib_volume=str(calib))
    for f in pkg.iterdir():
        if f.suffix in (".json", ".py"):
            text = f.read_text(errors="replace")
            assert "Doe_Jane" not in text and str(Path.home()) not in text and str(tmp_path) not in text, f.name
    q = json.loads((pkg / "package.json").read_text())["quantization"]["calibration_scan"]
    assert q.startswith("salted-sha256:")
