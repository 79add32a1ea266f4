"""Native vs atlas space (issue #18): which files are atlas-space, atlas-space mL in `stats`,
`segment` and `batch`, OASIS's ASF (native mL = atlas mL / ASF, eTIV = 1755 / ASF), masks that
keep the scan's sform/qform code, and the TIV range check only on native volumes."""
import csv
import json

import nibabel as nib
import numpy as np
import pytest

from engine import batch
from engine.cli import main
from engine.io.space import Space, atlas_space_reason, mask_xform_code, read_oasis_asf
from engine.io.stats import volume_stats
from engine.io.volume import read_volume, save_labels
from tests.phantoms import write_scan


def _nifti(path, data, code, affine=None):
    """A NIfTI with the given sform and qform code (nibabel's default would be sform 2, qform 0)."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    nib.save(img, str(path))
    return path


def _analyze(path, data):
    nib.save(nib.AnalyzeImage(data, np.diag([-1.0, 1.0, 1.0, 1.0])), str(path))
    return path


def _cube_labels():
    lab = np.zeros((12, 12, 10), np.uint8)
    lab[2:10, 2:10, 2:8] = 2
    lab[4:8, 4:8, 3:7] = 3
    lab[2, 2:10, 2:8] = 1
    return lab


def test_t88_files_and_talairach_or_mni_codes_are_atlas_and_ras_scanner_is_native(tmp_path):
    lab = _cube_labels()
    t88 = read_volume(_analyze(tmp_path / "OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.hdr",
                               lab.astype(np.int16) * 50), kind="image")
    assert t88.xform_code == 0 and "_t88_" in atlas_space_reason(t88)
    assert mask_xform_code(t88) == 3, "a mask of an OASIS T88 scan says Talairach"
    mni = read_volume(_nifti(tmp_path / "mni.nii.gz", lab, 4), kind="labels")
    assert mni.xform_code == 4 and "MNI" in atlas_space_reason(mni)
    tal = read_volume(_nifti(tmp_path / "tal.nii.gz", lab, 3), kind="labels")
    assert "Talairach" in atlas_space_reason(tal)
    # the sform code decides; a qform-only Talairach file counts too
    img = nib.Nifti1Image(lab, np.eye(4))
    img.set_sform(np.eye(4), code=0)
    img.set_qform(np.eye(4), code=3)
    nib.save(img, str(tmp_path / "qform_only.nii.gz"))
    assert read_volume(tmp_path / "qform_only.nii.gz", kind="labels").xform_code == 3
    ras = read_volume(_nifti(tmp_path / "ras.nii.gz", lab, 1), kind="labels")
    assert ras.orientation == "RAS" and ras.xform_code == 1
    assert atlas_space_reason(ras) is None and mask_xform_code(ras) == 1
    ras.atlas_marked = True  # --atlas-space / the GUI's checkbox
    assert atlas_space_reason(ras) == "marked atlas-registered"
    assert volume_stats(ras)["volume_unit"] == "atlas-space mL"


def test_asf_turns_1200_atlas_ml_into_1000_native_and_etiv_1462_5(tmp_path, capsys):
    lab = np.zeros((60, 50, 60), np.uint8)  # 2 mm voxels: 8 uL each
    lab[:10, :50, :60] = 1  # 30,000 voxels = 240 mL
    lab[10:30, :50, :60] = 2  # 480 mL
    lab[30:50, :50, :60] = 3  # 480 mL
    mask = _nifti(tmp_path / "OAS1_0002_MR1_t88_seg.nii.gz", lab, 3, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert main(["stats", str(mask), "--asf", "1.2", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["space"] == "atlas" and st["volume_unit"] == "atlas-space mL" and st["asf"] == 1.2
    assert st["icv_ml"] == pytest.approx(1200.0)
    assert st["native_icv_ml"] == pytest.approx(1000.0)
    assert st["native_volumes_ml"]["gm"] == pytest.approx(400.0)
    assert st["etiv_oasis_ml"] == pytest.approx(1462.5)
    assert main(["stats", str(mask), "--asf", "1.2"]) == 0
    table = capsys.readouterr().out
    assert "atlas-space mL" in table and "native mL" in table and "1000.00" in table
    assert "eTIV (OASIS, 1755/ASF): 1462.5 mL" in table
    assert main(["stats", str(mask), "--asf", "1.2", "--csv", "-"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    icv = next(r for r in rows if r["class"] == "icv")
    assert icv["unit"] == "atlas-space mL" and float(icv["native_volume_ml"]) == pytest.approx(1000.0)
    assert float(next(r for r in rows if r["class"] == "etiv_oasis")["native_volume_ml"]) == pytest.approx(1462.5)
    # without an ASF: atlas-space mL, no native volumes
    assert main(["stats", str(mask), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["native_icv_ml"] is None and st["etiv_oasis_ml"] is None
    # an ASF on a native file, or a number that is no ASF, is a one-line error
    native = _nifti(tmp_path / "native.nii.gz", lab, 1, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert main(["stats", str(native), "--asf", "1.2"]) == 2
    assert "--atlas-space" in capsys.readouterr().err
    assert main(["stats", str(native), "--atlas-space", "--asf", "1.2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["native_icv_ml"] == pytest.approx(1000.0)
    assert main(["stats", str(mask), "--asf", "1462.5"]) == 2
    assert "eTIV" in capsys.readouterr().err


def test_saved_masks_keep_the_scans_code(tmp_path, tiny_model_dir, capsys):
    lab = np.zeros((6, 6, 6), np.uint8)
    save_labels(tmp_path / "old_call.nii.gz", lab, np.eye(4))  # the old signature still writes code 1
    assert int(nib.load(str(tmp_path / "old_call.nii.gz")).header["sform_code"]) == 1
    save_labels(tmp_path / "mni_seg.nii.gz", lab, np.eye(4), xform_code=4)
    hdr = nib.load(str(tmp_path / "mni_seg.nii.gz")).header
    assert int(hdr["sform_code"]) == 4 and int(hdr["qform_code"]) == 4

    src = write_scan(tmp_path / "src.nii.gz", 1)
    img = nib.load(str(src))
    scan = _nifti(tmp_path / "mni_T1w.nii.gz", np.asanyarray(img.dataobj), 4, img.affine)
    out = tmp_path / "mni_T1w_seg.nii.gz"
    assert main(["segment", str(scan), "-o", str(out), "--weights", str(tiny_model_dir), "--planes", "axial",
                 "--uncertainty", str(tmp_path / "unc.nii.gz"), "--asf", "1.25"]) == 0
    text = capsys.readouterr().out
    assert "volumes (atlas-space mL)" in text and "MNI" in text
    assert "volumes (native mL)" in text and "eTIV (OASIS, 1755/ASF) 1404.0 mL" in text
    hdr = nib.load(str(out)).header
    assert int(hdr["sform_code"]) == 4 and int(hdr["qform_code"]) == 4
    assert int(nib.load(str(tmp_path / "unc.nii.gz")).header["sform_code"]) == 4
    assert volume_stats(read_volume(out, kind="labels"))["space"] == "atlas", "the mask says atlas space too"
    # postprocess keeps the mask's code
    assert main(["postprocess", str(out), "-o", str(tmp_path / "clean.nii.gz"), "--keep-largest"]) == 0
    assert int(nib.load(str(tmp_path / "clean.nii.gz")).header["sform_code"]) == 4


def test_tiv_range_is_checked_on_native_volumes_only():
    row = {"tiv_ml": 1300.0, "csf_fraction": 0.2, "gm_fraction": 0.45, "wm_fraction": 0.35}
    low = dict(row, tiv_ml=600.0)
    assert any("TIV" in f for f in batch.qc_flags(low, False, [])), "a native 600 mL TIV is flagged"
    assert any("TIV" in f for f in batch.qc_flags(dict(low, space="native"), False, []))
    atlas = dict(low, space="atlas", asf="", native_tiv_ml="")
    assert not any("TIV" in f for f in batch.qc_flags(atlas, False, [])), "atlas space without an ASF: not checked"
    with_asf = dict(low, space="atlas", asf=1.2, native_tiv_ml=500.0)
    assert any(f.startswith("native TIV 500") for f in batch.qc_flags(with_asf, False, []))
    fine = dict(row, space="atlas", asf=0.8, native_tiv_ml=1625.0)
    assert not any("TIV" in f for f in batch.qc_flags(fine, False, []))


def test_oasis_csv_and_space_columns(tmp_path):
    (tmp_path / "oasis.csv").write_text("\ufeffID,M/F,Hand,Age,eTIV,nWBV,ASF,Delay\n"
                                        "OAS1_0001_MR1,F,R,74,1344,0.743,1.306,N/A\n"
                                        "OAS1_0002_MR1,F,R,55,1147,0.810,1.531,N/A\n"
                                        "OAS1_0003_MR1,F,R,73,1454,0.708,,N/A\n")
    assert read_oasis_asf(tmp_path / "oasis.csv") == {"OAS1_0001_MR1": 1.306, "OAS1_0002_MR1": 1.531}
    (tmp_path / "bad.csv").write_text("Subject,Scale\nOAS1_0001_MR1,1.3\n")
    with pytest.raises(ValueError, match="ID"):
        read_oasis_asf(tmp_path / "bad.csv")
    cols = batch.space_columns(Space("OASIS _t88_ file", 1.2), {"csf": 240.0, "gm": 480.0, "wm": 480.0})
    assert cols["native_tiv_ml"] == 1000.0 and cols["native_gm_ml"] == 400.0 and cols["etiv_oasis_ml"] == 1462.5
    cols = batch.space_columns(Space("OASIS _t88_ file"), {"csf": 240.0, "gm": 480.0, "wm": 480.0})
    assert cols["space"] == "atlas" and cols["native_tiv_ml"] is None and cols["etiv_oasis_ml"] is None
    cols = batch.space_columns(Space(), {"csf": 240.0, "gm": 480.0, "wm": 480.0})
    assert cols["space"] == "native" and cols["native_tiv_ml"] == 1200.0


def _oasis_session(root, sid, seed):
    """An OASIS-1 tree entry: OAS1_xxxx_MR1/PROCESSED/MPRAGE/T88_111/*_t88_masked_gfc.hdr (Analyze)."""
    img = nib.load(str(write_scan(root / "tmp" / f"{sid}.nii.gz", seed)))
    d = root / "oasis" / sid / "PROCESSED" / "MPRAGE" / "T88_111"
    d.mkdir(parents=True)
    data = np.asanyarray(img.dataobj).astype(np.int16)
    nib.save(nib.AnalyzeImage(data, np.diag([-1.2, 1.2, 1.5, 1.0])), str(d / f"{sid}_mpr_n4_anon_111_t88_masked_gfc.hdr"))


def test_batch_oasis_csv_fills_asf_per_session_and_skips_the_tiv_check_without_one(tmp_path, tiny_model_dir,
                                                                                   capsys):
    for sid, seed in (("OAS1_0001_MR1", 1), ("OAS1_0002_MR1", 2)):
        _oasis_session(tmp_path, sid, seed)
    (tmp_path / "oasis.csv").write_text("ID,M/F,ASF\nOAS1_0001_MR1,F,1.25\nOAS1_0009_MR1,M,1.1\n")
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "oasis"), "-o", str(out), "--weights", str(tiny_model_dir),
                 "--oasis-csv", str(tmp_path / "oasis.csv")]) == 0
    assert "no ASF for 1 of 2 scans (OAS1_0002_MR1)" in capsys.readouterr().err
    rows = {r["scan"]: r for r in csv.DictReader(open(out / "volumes.csv"))}
    with_asf, without = rows["OAS1_0001_MR1"], rows["OAS1_0002_MR1"]
    for r in (with_asf, without):
        assert r["space"] == "atlas" and "_t88_" in r["space_reason"]
        hdr = nib.load(str(out / r["mask"])).header
        assert int(hdr["sform_code"]) == 3, "the mask of an OASIS T88 scan says Talairach"
    assert float(with_asf["asf"]) == 1.25 and float(with_asf["etiv_oasis_ml"]) == pytest.approx(1404.0)
    assert float(with_asf["native_tiv_ml"]) == pytest.approx(float(with_asf["tiv_ml"]) / 1.25, abs=2e-3)
    assert float(with_asf["native_gm_ml"]) == pytest.approx(float(with_asf["gm_ml"]) / 1.25, abs=2e-3)
    assert "native TIV" in with_asf["qc_flags"], "a ~30 mL phantom is implausible once native"
    assert without["asf"] == "" and without["native_tiv_ml"] == "" and without["etiv_oasis_ml"] == ""
    assert "TIV" not in without["qc_flags"], "atlas-space mL without an ASF: the range is not checked"
    page = (out / "report.html").read_text()
    assert "atlas-space mL" in page and "eTIV (OASIS, 1755/ASF)" in page
    assert "TIV range check" in page and "not applied" in page and "TIV range not checked (no ASF)" in page
    assert main(["batch", str(tmp_path / "oasis"), "-o", str(tmp_path / "o2"), "--weights", str(tiny_model_dir),
                 "--oasis-csv", str(tmp_path / "oasis.csv"), "--asf", "1.2"]) == 2
    assert "choose one" in capsys.readouterr().err
