"""The `brainseg` command line: info, stats, evaluate, segment, finetune; errors are one line."""
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from engine.cli import main, parse_slices
from engine.volume import save_labels


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
    assert parse_slices("3,1,5-7", 10) == [1, 3, 5, 6, 7]
    with pytest.raises(Exception, match="outside"):
        parse_slices("12", 10)


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
    assert main(["evaluate", str(tmp_path / "pred.nii"), str(tmp_path / "ref.nii"), "--json", "--slices", "1-2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dice"]["gm"] == 1.0 and out["slices"] == [1, 2]


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
    text = capsys.readouterr().out
    assert "model: enet" in text and "segmented 4 slices" in text
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
