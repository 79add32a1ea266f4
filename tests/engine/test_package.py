"""Inference packages: export both networks in both formats, run the standalone runner in a clean
subprocess on a small synthetic scan and compare its mask with Segmenter's; tampering is refused."""
import ast
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from engine.core.mx_env import get_mx

mx = get_mx()

AFFINE = np.array([[-1.0, 0, 0, 40], [0, 1.2, 0, -30], [0, 0, 2.0, 5], [0, 0, 0, 1]])
RUNNER_IMPORTS = {"__future__", "argparse", "hashlib", "json", "sys", "warnings", "pathlib", "numpy",
                  "nibabel", "onnxruntime", "mxnet"}


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
def unet_dir(tmp_path_factory):
    """A small untrained U-Net; its model.json carries arch_kwargs the export must honour."""
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir

    kw = {"base": 8, "levels": 3}
    net = get_model("unet", **kw)
    net.initialize(mx.init.Xavier(magnitude=6))
    net(mx.nd.zeros((1, 1, 16, 16)))
    d = tmp_path_factory.mktemp("unet_model")
    write_model_dir(d, net, "unet", kw, version="tiny-unet")
    return d


@pytest.fixture(scope="module")
def packages(tmp_path_factory, tiny_model_dir, unet_dir):
    """(arch, format) -> package folder; the U-Net ONNX one is made through `brainseg export`."""
    from engine.cli import main
    from engine.package import export_package

    root = tmp_path_factory.mktemp("packages")
    out = {}
    for arch, model in (("enet", tiny_model_dir), ("unet", unet_dir)):
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
def references(scan, pir_scan, tiny_model_dir, unet_dir):
    """arch -> Segmenter's labels and probability margins (the scan has 1 x 1.2 x 2 mm voxels:
    both go through the resampling and the three-plane fusion)."""
    from engine.infer.inference import Segmenter

    out = {}
    for arch, model_dir in (("enet", tiny_model_dir), ("unet", unet_dir)):
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
    assert len(RUNNER.read_text().splitlines()) < 350  # small enough to read: it repeats conform.py too


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


def test_runner_repeats_sparse_view_aggregation(tiny_model_dir, scan, tmp_path, monkeypatch):
    """With secondary_stride 2 recorded in the package, the runner skips and interpolates the same
    coronal and sagittal slices as Segmenter."""
    import engine.infer.inference as inference
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.package import export_package, load_runner

    monkeypatch.setitem(inference.SECONDARY_STRIDE, "enet", 2)
    pkg = export_package(tiny_model_dir, tmp_path / "pkg", "onnx")
    assert json.loads((pkg / "package.json").read_text())["secondary_stride"] == 2
    out = tmp_path / "mask.nii.gz"
    assert load_runner(pkg / "segment_package.py").main([str(pkg), str(scan), "-o", str(out)]) == 0
    img = nib.load(str(scan))
    res = Segmenter(tiny_model_dir).segment(np.asarray(img.dataobj, np.float32),
                                            SegmentConfig(return_probabilities=True), affine=img.affine)
    top2 = np.sort(res.probabilities, axis=0)[-2:]
    decisive = (top2[1] - top2[0]) > 1e-3
    got = np.asanyarray(nib.load(str(out)).dataobj)
    assert decisive.mean() > 0.8 and (got[decisive] == res.labels[decisive]).all()
