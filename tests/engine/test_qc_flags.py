"""Every QC flag in both directions (issue #20): it fires when it should and stays quiet when it
should not - the batch's row checks, and the facts opening a scan finds (engine/document.py)."""
import nibabel as nib
import numpy as np
import pytest

from engine.batch import qc_flags
from engine.document import open_scan

GOOD = {"tiv_ml": 1500.0, "mean_entropy": 0.30, "csf_fraction": 0.25, "gm_fraction": 0.45, "wm_fraction": 0.30}


@pytest.mark.parametrize("change, skull, expect", [
    ({}, False, None),
    ({}, True, "skull present"),
    ({"mean_entropy": 0.60}, False, "low confidence"),
    ({"tiv_ml": 600.0}, False, "TIV 600 mL outside"),
    ({"tiv_ml": 2600.0}, False, "TIV 2600 mL outside"),
    ({"csf_fraction": 0.60}, False, "CSF fraction 0.60 outside"),
    ({"gm_fraction": 0.20}, False, "GM fraction 0.20 outside"),
    ({"wm_fraction": 0.55}, False, "WM fraction 0.55 outside"),
    # atlas space: the TIV range is for native volumes only
    ({"space": "atlas", "tiv_ml": 2600.0}, False, None),
    ({"space": "atlas", "tiv_ml": 1700.0, "native_tiv_ml": 600.0}, False, "native TIV 600 mL outside"),
])
def test_row_flags_fire_when_they_should_and_only_then(change, skull, expect):
    flags = qc_flags({**GOOD, **change}, skull, [])
    if expect is None:
        assert flags == [], flags
    else:
        assert len(flags) == 1 and flags[0].startswith(expect), flags


def _save(tmp_path, name, data, affine, analyze=False, codes=1):
    p = tmp_path / name
    if analyze:
        nib.save(nib.AnalyzeImage(data.astype(np.int16), affine), str(p))
    else:
        img = nib.Nifti1Image(data.astype(np.float32), affine)
        img.set_sform(affine, code=codes)
        img.set_qform(affine, code=codes)
        nib.save(img, str(p))
    return p


def _brain(shape=(48, 56, 44)):
    """An asymmetric ellipsoid 'brain' (a bump on the right front), LAS-ordered."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2)
    img = np.where(r < 1, 100.0, 0.0) + np.where(r < 0.6, 60.0, 0.0)
    img[(x < -0.3) & (y > 0.3) & (r < 1.05)] = 80.0
    return img


def test_geometry_flags_fire_when_they_should_and_only_then(tmp_path):
    b = _brain()
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    # a plain LAS 1 mm NIfTI: no flag at all
    assert open_scan(_save(tmp_path, "las.nii.gz", b, las)).facts(check_skull=False).flags == []
    # RAS 1 mm (BIDS / dcm2niix): reoriented only - a note, no flag
    ras = open_scan(_save(tmp_path, "ras.nii.gz", b[::-1], np.diag([1.0, 1.0, 1.0, 1.0])))
    assert ras.facts(check_skull=False).flags == [] and ras.facts(check_skull=False).of("network")
    # 1.5 mm slices: resampled, flagged
    thick = open_scan(_save(tmp_path, "thick.nii.gz", b[:, :, ::2], np.diag([-1.0, 1.0, 2.0, 1.0])))
    assert thick.facts(check_skull=False).flags == ["resampled for the network"]
    # Analyze (no orientation stored): assumed or found from the anatomy, flagged as such
    ana = open_scan(_save(tmp_path, "ana.hdr", b, las, analyze=True))
    flags = ana.facts(check_skull=False).flags
    assert flags and all(f in ("orientation assumed", "orientation from anatomy") for f in flags), flags
    # a header that is not contradicted says nothing about contradictions
    assert not any("contradicts" in f for f in open_scan(tmp_path / "las.nii.gz").facts(check_skull=False).flags)
