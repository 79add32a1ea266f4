"""The `brainseg` command line: info, stats, evaluate, segment, finetune; errors are one line."""
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from engine.cli import main, parse_slices
from engine.io.volume import save_labels


@pytest.fixture
def labels_file(tmp_path):
    lab = np.zeros((10, 12, 6), np.uint8)
    lab[2:8, 2:10, 1:5] = 2
    lab[4:6, 4:8, 2:4] = 3
    lab[2, 2:10, 1:5] = 1
    aff = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm^3 voxels = 0.002 mL
    p = tmp_path / "mask.nii.gz"
    save_labels(p, lab, aff)
    return p, lab


def test_parse_slices():
    """Slice numbers are typed 1-based, as the app shows them (issue #19), and come back as indices."""
    assert parse_slices("3,1,5-7", 10) == [0, 2, 4, 5, 6]
    assert parse_slices("10", 10) == [9]
    for bad in ("11", "0"):
        with pytest.raises(Exception, match="outside 1..10"):
            parse_slices(bad, 10)


def test_info_json_for_labels(labels_file, capsys):
    p, lab = labels_file
    assert main(["info", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shape"] == [10, 12, 6] and out["voxel_size"] == [2.0, 1.0, 1.0] and out["dtype"] == "uint8"
    assert out["volumes_ml"]["gm"] == pytest.approx((lab == 2).sum() * 0.002)


def test_stats_json_and_csv_match_numpy(labels_file, capsys, tmp_path):
    p, lab = labels_file
    csv_path = tmp_path / "vol.csv"
    assert main(["stats", str(p), "--json", "--csv", str(csv_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    for v, key in ((1, "csf"), (2, "gm"), (3, "wm")):
        assert out["volumes_ml"][key] == pytest.approx((lab == v).sum() * 0.002)
        assert out["voxels"][key] == int((lab == v).sum())
    icv = (lab > 0).sum()
    assert out["icv_fraction"]["gm"] == pytest.approx((lab == 2).sum() / icv)
    text = csv_path.read_text().splitlines()
    assert text[0] == "class,name,voxels,volume_ml,icv_fraction" and text[3].startswith("gm,Grey matter,")


def test_evaluate_exact_dice_and_slices(tmp_path, capsys):
    ref = np.zeros((4, 4, 3), np.uint8)
    ref[:2] = 2
    pred = ref.copy()
    pred[0, 0, 0] = 3  # one GM voxel called WM in slice 0
    save_labels(tmp_path / "ref.nii", ref, np.eye(4))
    save_labels(tmp_path / "pred.nii", pred, np.eye(4))
    assert main(["evaluate", str(tmp_path / "pred.nii"), str(tmp_path / "ref.nii"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dice"]["gm"] == pytest.approx(2 * 23 / (24 + 23))
    assert out["dice"]["wm"] == 0.0 and out["dice"]["csf"] is None
    assert out["confusion_matrix"][2] == [0, 0, 23, 1]
    # slices 2-3 as the app numbers them: array slices 1 and 2, without slice 0's error
    assert main(["evaluate", str(tmp_path / "pred.nii"), str(tmp_path / "ref.nii"), "--json", "--slices", "2-3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dice"]["gm"] == 1.0 and out["slices"] == [2, 3]


def test_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "broken.img"
    bad.write_bytes(b"\0" * 777)
    r = subprocess.run([sys.executable, "-m", "engine.cli", "info", str(bad), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.img" in lines[0] and "Traceback" not in r.stderr


def test_evaluate_shape_mismatch(tmp_path, capsys):
    save_labels(tmp_path / "a.nii", np.zeros((4, 4, 3), np.uint8), np.eye(4))
    save_labels(tmp_path / "b.nii", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    assert main(["evaluate", str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) == 2
    assert "4x4x3" in capsys.readouterr().err


def _scan(tmp_path):
    shape = (40, 48, 6)
    img = np.zeros(shape, np.float32)
    img[8:32, 8:40, 1:5] = 500
    aff = np.diag([-1.0, 1.0, 1.5, 1.0])
    aff[:3, 3] = [20, -24, -4]
    p = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), str(p))
    return p, aff, shape


def test_segment_end_to_end(tmp_path, tiny_model_dir, capsys):
    p, aff, shape = _scan(tmp_path)
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(p), "-o", str(out), "--weights", str(tiny_model_dir),
                 "--uncertainty", str(tmp_path / "unc.nii.gz")]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "model: enet (tiny-test)" in text and "weights from" in text
    assert "(axial+coronal+sagittal)" in text and "total" in text
    # 1.5 mm slices: the scan is resampled for the network, and the user is told
    assert "resampled 1x1x1.5 mm -> 1 mm" in captured.err
    assert "segment (enet, axial+coronal+sagittal):" in captured.err  # stderr is no tty here
    img = nib.load(str(out))
    assert img.shape == shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    assert np.asanyarray(img.dataobj).max() <= 3
    assert nib.load(str(tmp_path / "unc.nii.gz")).shape == shape
    # Analyze output too
    assert main(["segment", str(p), "-o", str(tmp_path / "seg_fseg.hdr"), "--weights", str(tiny_model_dir)]) == 0
    assert (tmp_path / "seg_fseg.img").exists()


def test_finetune_cli_writes_version_segment_accepts(tmp_path, tiny_model_dir, capsys):
    p, aff, shape = _scan(tmp_path)
    lab = np.zeros(shape, np.uint8)
    lab[8:32, 8:40, 1:5] = 2
    lab[14:26, 16:32, 1:5] = 3
    save_labels(tmp_path / "lab.nii.gz", lab, aff)
    out = tmp_path / "v1"
    assert main(["finetune", str(p), str(tmp_path / "lab.nii.gz"), "--slices", "1-4", "--from", str(tiny_model_dir),
                 "--epochs", "1", "--batch-size", "2", "-o", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert len(meta["after"]["confusion_matrix"]) == 4 and "gm" in meta["after"]["dice"]
    assert main(["segment", str(p), "-o", str(tmp_path / "s.nii"), "--weights", str(out)]) == 0
    # corrections made in coronal slices
    assert main(["finetune", str(p), str(tmp_path / "lab.nii.gz"), "--plane", "coronal", "--slices", "21-25",
                 "--from", str(tiny_model_dir), "--epochs", "1", "--batch-size", "2", "-o", str(tmp_path / "v2")]) == 0
    meta = json.loads((tmp_path / "v2" / "model.json").read_text())
    assert sorted(meta["train_slices"] + meta["val_slices"]) == [f"coronal:{k}" for k in range(20, 25)]


def test_finetune_without_output_adds_a_store_version(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Without -o, finetune adds a version to the model store, as the GUI's panel does; it becomes
    active unless it scored lower than its parent on the same held-back slices (then --activate)."""
    monkeypatch.setenv("BRAINSEG_HOME", str(tmp_path / "home"))
    p, aff, shape = _scan(tmp_path)
    lab = np.zeros(shape, np.uint8)
    lab[8:32, 8:40, 1:5] = 2
    lab[14:26, 16:32, 1:5] = 3
    save_labels(tmp_path / "lab.nii.gz", lab, aff)
    assert main(["finetune", str(p), str(tmp_path / "lab.nii.gz"), "--slices", "1-4", "--from", str(tiny_model_dir),
                 "--epochs", "1", "--batch-size", "2", "--activate"]) == 0
    out = capsys.readouterr().out
    assert "enet-v001 is now the active enet model" in out
    assert main(["models", "list", "--json", "--model", "enet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    mine = [r for r in rows if r["version"] == "enet-v001"]
    assert mine and mine[0]["active"] and mine[0]["parent"]


# ----------------------------------------------------------------------------- errors and options
def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brainseg: error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_slice_lists_reach_the_parser(tmp_path, capsys):
    """With files that exist, a bad --slices is reported as what it is (not as a missing file)."""
    lab = np.zeros((6, 6, 4), np.uint8)
    lab[2:4, 2:4, 1:3] = 2
    for name in ("a.nii", "b.nii"):
        nib.save(nib.Nifti1Image(lab, np.diag([-1.0, 1, 1, 1])), str(tmp_path / name))
    a, b = str(tmp_path / "a.nii"), str(tmp_path / "b.nii")
    for bad, msg in (("3-1", "runs backwards"), ("x", "not a number"), ("9", "outside 1..4"), ("0", "outside 1..4")):
        assert main(["evaluate", a, b, "--slices", bad]) == 2
        assert msg in _one_error_line(capsys.readouterr().err)
    assert main(["evaluate", a, b, "--slices", "1-2", "--json"]) == 0


@pytest.mark.parametrize("argv, expect", [
    ([], "COMMAND"),
    (["frobnicate"], "invalid choice"),
    (["segment", "scan.nii"], "-o/--output"),
    (["segment", "scan.nii", "-o", "x.nii", "--batch-size", "0"], "at least 1"),
    (["evaluate", "a.nii", "b.nii", "--slices", "1"], "no such file"),
])
def test_usage_errors_are_one_line(argv, expect, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert expect in _one_error_line(captured.err) and captured.out == ""


def test_unexpected_error_is_one_line_exit_1(labels_file, capsys, monkeypatch):
    import engine.cli as cli

    def broken(args):
        raise RuntimeError("something deep went wrong\nsecond line")

    monkeypatch.setattr(cli, "cmd_info", broken)
    assert main(["info", str(labels_file[0])]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "RuntimeError: something deep went wrong" in line and "-v" in line
    assert main(["info", str(labels_file[0]), "-v"]) == 1  # -v after the subcommand; adds the traceback
    assert "Traceback" in capsys.readouterr().err


def test_parse_slices_forms():
    assert parse_slices(None, 5) is None
    assert parse_slices(" 5 , 1-2,2 ", 5) == [0, 1, 4]
    for bad, msg in (("3-1", "backwards"), ("a", "not a number"), ("-1", "outside"), (",", "empty"), ("6", "outside"),
                     ("0", "outside")):
        with pytest.raises(Exception, match=msg):
            parse_slices(bad, 5)


# ----------------------------------------------------------------------------- info / stats / evaluate
def test_info_json_for_image_and_text(tmp_path, capsys):
    aff = np.diag([-1.0, 1.0, 1.25, 1.0])
    data = np.arange(6 * 7 * 5, dtype=np.int16).reshape(6, 7, 5)
    nib.save(nib.Nifti1Image(data, aff), str(tmp_path / "t1.nii.gz"))
    assert main(["info", str(tmp_path / "t1.nii.gz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"shape", "voxel_size", "dtype", "kind", "orientation", "range", "layout_note"} <= set(out)
    assert out["kind"] == "image" and out["orientation"] == "LAS" and out["voxel_size"] == [1.0, 1.0, 1.25]
    assert out["range"] == [0.0, float(data.max())] and out["layout_note"] is None and "volumes_ml" not in out
    assert main(["info", str(tmp_path / "t1.nii.gz")]) == 0
    text = capsys.readouterr().out
    assert "6x7x5" in text and "1 x 1 x 1.25 mm" in text and "LAS" in text


def test_info_headerless_labels_reports_layout(tmp_path, capsys):
    from engine.io.volume import OASIS_SHAPE

    lab = np.zeros(OASIS_SHAPE, np.uint8)
    lab[60:100, 60:120, 60:100] = 3
    lab.ravel(order="F").tofile(tmp_path / "OAS1_0001_fseg.img")
    assert main(["info", str(tmp_path / "OAS1_0001_fseg.img"), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["kind"] == "labels" and "uint8" in out["layout_note"] and out["shape"] == list(OASIS_SHAPE)
    assert out["voxels"]["wm"] == 40 * 60 * 40 and out["volumes_ml"]["wm"] == pytest.approx(96.0)


def test_stats_csv_to_stdout_and_table(labels_file, capsys, tmp_path, monkeypatch):
    p, lab = labels_file
    monkeypatch.chdir(tmp_path)
    assert main(["stats", str(p), "--csv", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "class,name,voxels,volume_ml,icv_fraction" and not (tmp_path / "-").exists()
    wm = lines[4].split(",")
    assert wm[:3] == ["wm", "White matter", str(int((lab == 3).sum()))]
    assert float(wm[3]) == pytest.approx((lab == 3).sum() * 0.002, abs=1e-4)
    assert float(wm[4]) == pytest.approx((lab == 3).sum() / (lab > 0).sum(), abs=1e-6)
    assert main(["stats", str(p)]) == 0
    table = capsys.readouterr().out
    assert "Grey matter" in table and "ICV" in table and "2 mm^3" in table


def test_stats_api_takes_a_volume(labels_file, tmp_path):
    from engine.io.stats import volume_stats, write_stats_json
    from engine.io.volume import read_volume

    p, lab = labels_file
    st = volume_stats(read_volume(p))
    assert st["voxel_volume_ml"] == pytest.approx(0.002) and st["file"].endswith("mask.nii.gz")
    assert st["icv_ml"] == pytest.approx((lab > 0).sum() * 0.002)
    assert st == volume_stats(lab, 0.002, source=st["file"])
    write_stats_json(tmp_path / "s.json", st)
    assert json.loads((tmp_path / "s.json").read_text())["voxels"]["csf"] == int((lab == 1).sum())


def test_evaluate_empty_tissue_gives_strict_json(tmp_path, capsys):
    empty = np.zeros((4, 4, 2), np.uint8)
    save_labels(tmp_path / "a.nii", empty, np.eye(4))
    save_labels(tmp_path / "b.nii", empty, np.diag([2.0, 1.0, 1.0, 1.0]))
    assert main(["evaluate", str(tmp_path / "a.nii"), str(tmp_path / "b.nii"), "--json"]) == 0
    captured = capsys.readouterr()

    def no_nan(name):
        raise AssertionError(f"{name} in JSON output")

    out = json.loads(captured.out, parse_constant=no_nan)
    assert out["mean_tissue_dice"] is None and out["dice"]["background"] == 1.0 and out["slices"] is None
    assert out["confusion_matrix"] == [[32, 0, 0, 0], [0] * 4, [0] * 4, [0] * 4]
    assert "different voxel-to-world affines" in captured.err


def test_info_starts_without_mxnet(labels_file):
    code = ("import sys, json; from engine.cli import main; rc = main(['info', sys.argv[1], '--json']); "
            "assert rc == 0 and 'mxnet' not in sys.modules, sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(labels_file[0])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "labels"


# ----------------------------------------------------------------------------- segment: checks before work
def test_segment_refuses_bad_outputs_before_loading_a_model(tmp_path, capsys):
    p, _, _ = _scan(tmp_path)
    for argv, expect in ((["-o", str(tmp_path / "seg.png")], "unknown output format"),
                         (["-o", str(p)], "refusing to overwrite"),
                         (["-o", str(tmp_path / "s.nii"), "--uncertainty", str(tmp_path / "u.hdr")], "use .nii.gz")):
        assert main(["segment", str(p), *argv, "--weights", str(tmp_path / "nowhere")]) == 2
        assert expect in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "seg.png").exists()


def test_segment_without_weights_says_what_to_do(tmp_path, capsys, monkeypatch):
    import engine.store.versions

    p, _, _ = _scan(tmp_path)
    monkeypatch.setenv("BRAINSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(engine.store.versions, "shipped_model_dir", lambda arch: tmp_path / "no-weights" / arch)
    assert main(["segment", str(p), "-o", str(tmp_path / "s.nii"), "--model", "enet"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no enet weights" in line and "--weights" in line
    assert main(["segment", str(p), "-o", str(tmp_path / "s.nii"), "--weights", str(tmp_path)]) == 2
    assert "model.json" in _one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- hardware and QC
def test_choose_model_profiles(monkeypatch):
    import engine.core.hardware as hw

    # what the hardware check says agrees with MXNet itself (whatever this machine has)
    from engine.core.mx_env import get_mx

    assert hw.gpu_available() == (get_mx().context.num_gpus() > 0)
    # issue #21: the shipped U-Net was worse on a real brain, so ENet is the default everywhere...
    monkeypatch.setattr(hw, "gpu_available", lambda: True)
    monkeypatch.setattr(hw, "cpu_cores", lambda: 32)
    monkeypatch.setattr(hw, "ram_gb", lambda: 128.0)
    arch, reason = hw.choose_model()
    assert arch == "enet" and "default everywhere" in reason and "0.863" in reason
    assert hw.choose_model("unet") == ("unet", "chosen by the user"), "a remembered U-Net choice still works"
    # ...and where a U-Net is recorded as measured better, the hardware profile decides again
    monkeypatch.setattr(hw, "unet_preferred", lambda: (True, ""))
    monkeypatch.setattr(hw, "gpu_available", lambda: False)
    monkeypatch.setattr(hw, "cpu_cores", lambda: 2)
    monkeypatch.setattr(hw, "ram_gb", lambda: 23.4)
    arch, reason = hw.choose_model()
    assert arch == "enet" and "2 CPU cores" in reason and "23 GB" in reason and "no GPU" in reason
    monkeypatch.setattr(hw, "cpu_cores", lambda: 16)
    assert hw.choose_model("auto")[0] == "unet"
    monkeypatch.setattr(hw, "ram_gb", lambda: 8.0)
    assert hw.choose_model("auto")[0] == "enet"
    monkeypatch.setattr(hw, "gpu_available", lambda: True)
    arch, reason = hw.choose_model()
    assert arch == "unet" and "GPU" in reason
    assert hw.choose_model("ENet") == ("enet", "chosen by the user")
    with pytest.raises(ValueError, match="auto, unet or enet"):
        hw.choose_model("resnet")


def test_choosing_the_model_does_not_load_mxnet():
    """The GUI asks for the model choice on its own thread, which must never load MXNet."""
    import subprocess
    import sys

    code = ("import sys; from engine.core.hardware import choose_model; print(choose_model()[0]); "
            "assert 'mxnet' not in sys.modules, 'mxnet loaded'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _head(skull: bool) -> np.ndarray:
    """The OASIS grid at 1 mm: an ellipsoid 'brain' of 1.2 L, optionally inside a bright 'scalp'
    (a 3.1 L head, the dark 'skull' between them left out of the foreground)."""
    x, y, z = np.ogrid[-88:88, -104:104, -88:88]
    r = (x / 65.0) ** 2 + (y / 80.0) ** 2 + (z / 55.0) ** 2
    vol = np.where(r <= 1.0, 100.0, 0.0).astype(np.float32)
    if skull:
        rh = (x / 84.0) ** 2 + (y / 102.0) ** 2 + (z / 86.0) ** 2
        vol[(rh <= 1.0) & (r > 1.15)] = 160.0
    return vol


def test_skull_heuristic():
    from engine.core.paths import DEMO_SCAN
    from engine.infer.qc import skull_present
    from engine.io.volume import read_volume

    assert not skull_present(_head(False), 0.001)
    assert skull_present(_head(True), 0.001)
    assert not skull_present(_head(True), 0.0005), "the same head at half the voxel volume is brain-sized"
    assert not skull_present(np.zeros((8, 8, 8), np.float32))
    demo = read_volume(DEMO_SCAN)
    assert not skull_present(demo.data, demo.voxel_volume_ml), "the demo scan is skull-stripped"


def test_segment_int8_refused_unless_validated(tmp_path, tiny_model_dir, capsys):
    import json as _json

    from engine.infer.inference import int8_offer

    p, _, _ = _scan(tmp_path)
    assert main(["segment", str(p), "-o", str(tmp_path / "q.nii.gz"), "--weights", str(tiny_model_dir), "--int8"]) == 2
    assert "INT8 has not been validated" in capsys.readouterr().err
    meta_path = tiny_model_dir / "model.json"
    saved = meta_path.read_text()
    try:
        meta = _json.loads(saved)
        meta["int8"] = {"dice_change": {"csf": -0.02, "gm": 0.001, "wm": 0.0}, "speedup": 2.0}
        meta_path.write_text(_json.dumps(meta))
        ok, why = int8_offer(tiny_model_dir)
        assert not ok and "0.0200" in why
        meta["int8"]["dice_change"]["csf"] = -0.004
        meta_path.write_text(_json.dumps(meta))
        assert int8_offer(tiny_model_dir)[0]
        meta["int8"]["speedup"] = 0.54  # accurate enough but slower than FP32: pointless to offer
        meta_path.write_text(_json.dumps(meta))
        ok, why = int8_offer(tiny_model_dir)
        assert not ok and "not faster" in why
    finally:
        meta_path.write_text(saved)


def test_segment_runs_int8_by_default_only_where_it_is_offered(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Issue #21 (U-Net's speed): --precision auto (the default) runs INT8 where the model's record
    offers it, and says so; --precision fp32 opts out; a model without the record stays FP32."""
    import json as _json
    import shutil

    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    p, _, _ = _scan(tmp_path)
    offered = tmp_path / "offered"
    shutil.copytree(tiny_model_dir, offered)
    meta = _json.loads((offered / "model.json").read_text())
    meta["int8"] = {"dice_change": {"csf": 0.001, "gm": 0.0, "wm": -0.0005}, "speedup": 2.1}
    (offered / "model.json").write_text(_json.dumps(meta))
    assert main(["segment", str(p), "-o", str(tmp_path / "a.nii.gz"), "--weights", str(offered)]) == 0
    out = capsys.readouterr().out
    assert "INT8)" in out and "precision: INT8 by default for this model" in out and "--precision fp32" in out
    assert (tmp_path / "cache" / "int8").is_dir()
    assert main(["segment", str(p), "-o", str(tmp_path / "b.nii.gz"), "--weights", str(offered),
                 "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "INT8" not in out
    assert main(["segment", str(p), "-o", str(tmp_path / "c.nii.gz"), "--weights", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "INT8" not in out and "precision:" not in out
    assert main(["segment", str(p), "-o", str(tmp_path / "d.nii.gz"), "--weights", str(offered), "--int8",
                 "--precision", "fp32"]) == 2
    assert "choose one" in capsys.readouterr().err


def test_finetune_never_overwrites(tmp_path, capsys):
    """`finetune -o` refuses an existing non-empty folder and the shipped weights, before any work."""
    from engine.core.paths import WEIGHTS_DIR

    old = tmp_path / "v1"
    old.mkdir()
    (old / "model.json").write_text("{}")
    for out in (old, WEIGHTS_DIR / "enet", WEIGHTS_DIR / "new"):
        assert main(["finetune", "scan.nii", "labels.nii", "--slices", "1", "-o", str(out)]) == 2
        err = _one_error_line(capsys.readouterr().err)
        assert ("not empty" in err or "shipped weights" in err) and "no such file" not in err
    assert (old / "model.json").read_text() == "{}" and not (WEIGHTS_DIR / "new").exists()


def test_verbose_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"not a nifti at all" * 10)
    assert main(["info", str(bad)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["-v", "info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "brainseg: error: " in err


def test_models_list_activate_rollback(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import shutil

    import engine.store.versions as versions

    monkeypatch.setenv("BRAINSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(versions, "shipped_model_dir", lambda arch: tiny_model_dir)
    v1 = tmp_path / "home" / "models" / "enet" / "enet-v001"
    shutil.copytree(tiny_model_dir, v1)
    meta = json.loads((v1 / "model.json").read_text())
    meta.update(version="enet-v001", parent="tiny-test")
    (v1 / "model.json").write_text(json.dumps(meta))
    assert main(["models", "list", "--model", "enet", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["active"]) for r in rows] == [("tiny-test", True), ("enet-v001", False)]
    assert main(["models", "activate", "enet-v001"]) == 0 and "enet-v001 is active" in capsys.readouterr().out
    assert main(["models", "list", "--model", "enet"]) == 0
    assert "* enet  enet-v001" in capsys.readouterr().out
    assert main(["models", "rollback", "--model", "enet"]) == 0
    assert "rolled back" in capsys.readouterr().out
    assert main(["models", "activate", "nope"]) == 2 and "no model version" in capsys.readouterr().err


def test_loading_mxnet_leaves_out_what_nothing_here_uses():
    """Start-up (issue #21): scikit-learn and scipy.stats are not pulled in by mxnet's import any more
    (about 0.5 s of each start on this machine), nor setuptools through its distutils shim (0.08 s);
    later imports of them work, and setuptools then finds no stray distutils to warn about."""
    import subprocess
    import sys

    code = ("import sys, warnings; shim = any(type(f).__module__ == '_distutils_hack' for f in sys.meta_path); "
            "from engine.core.mx_env import get_mx; mx = get_mx(); "
            "bad = [m for m in ('sklearn', 'scipy.stats', 'setuptools', 'distutils') if m in sys.modules]; "
            "assert not bad, bad; import sklearn.base, scipy.stats; "
            "[warnings.filterwarnings('error', message=m) for m in ('Setuptools is replacing distutils', "
            "'Distutils was imported before Setuptools')]; import setuptools, distutils.version; "
            "assert not shim or 'setuptools' in distutils.__file__, distutils.__file__; "
            "from mxnet.contrib import quantization; print(mx.nd.ones((2,)).sum().asscalar())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "2.0", out.stderr[-1500:]


def test_a_subcommand_imports_only_what_it_needs(tmp_path):
    """Issue #21 (start-up): `brainseg segment` or `info` no longer imports the training, benchmark,
    packaging and batch modules just to build their parsers; `brainseg batch` still finds its own,
    and a mistyped command still lists every subcommand."""
    import subprocess
    import sys
    import textwrap

    p, _, _ = _scan(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        from engine.cli import main
        rc = main(["info", {str(p)!r}])
        print("LOADED", sorted(m for m in ("engine.train.oasis", "engine.bench", "engine.package", "engine.batch")
                               if m in sys.modules), rc)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "LOADED [] 0" in res.stdout, res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "engine.cli", "batch", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "--oasis-csv" in res.stdout
    res = subprocess.run([sys.executable, "-m", "engine.cli", "segmnt"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "'batch'" in res.stderr and "'export'" in res.stderr


def test_int8_is_never_the_default_on_a_gpu_machine(tmp_path, tiny_model_dir, monkeypatch):
    """quantize_model is CPU (oneDNN) only and the Segmenter runs on the GPU where there is one: there
    INT8 is not offered, so auto stays FP32 (a review caught U-Net failing by default on GPUs)."""
    import json as _json
    import shutil

    import engine.core.hardware as hw
    from engine.infer.inference import default_precision, int8_offer

    offered = tmp_path / "offered"
    shutil.copytree(tiny_model_dir, offered)
    meta = _json.loads((offered / "model.json").read_text())
    meta["int8"] = {"dice_change": {"csf": 0.001, "gm": 0.0, "wm": 0.0}, "speedup": 2.0}
    (offered / "model.json").write_text(_json.dumps(meta))
    monkeypatch.setattr(hw, "gpu_available", lambda: False)
    assert default_precision(offered)[0] == "int8"
    monkeypatch.setattr(hw, "gpu_available", lambda: True)
    ok, why = int8_offer(offered)
    assert not ok and "GPU" in why and default_precision(offered)[0] == "fp32"
    meta["int8"] = {"speedup": 2.0}  # an incomplete record: not offered, no crash
    (offered / "model.json").write_text(_json.dumps(meta))
    monkeypatch.setattr(hw, "gpu_available", lambda: False)
    assert int8_offer(offered) == (False, "the model's INT8 record is incomplete (run bench/int8_eval.py again)")


@pytest.mark.skipif(os.name != "posix", reason="exec replaces the process on POSIX only")
def test_gui_launcher_hands_its_process_to_the_app(tmp_path):
    """`brainseg gui SCAN` becomes the app (exec): a signal sent to the launcher's PID ends the app,
    instead of leaving its window open without a parent. A stand-in `brainseg_gui` in the working
    folder records its PID and arguments and waits."""
    import signal
    import time

    fake = tmp_path / "brainseg_gui"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(
        "import os, sys, time, pathlib\n"
        "pathlib.Path('started.tmp').write_text(f'{os.getpid()} {sys.argv[1:]}')\n"
        "os.replace('started.tmp', 'started')\n"
        "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "gui", "my scan.nii.gz"], cwd=tmp_path)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "started").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        pid, argv = (tmp_path / "started").read_text().split(" ", 1)
        assert int(pid) == proc.pid and argv == str(["my scan.nii.gz"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
