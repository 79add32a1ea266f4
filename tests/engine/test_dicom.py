"""DICOM series (engine/io/dicom.py through read_volume): geometry in axial, sagittal and oblique
orientations against the source volume, rescale, two series in one folder, and clear errors for a
missing slice, uneven spacing, mixed orientations, compressed pixel data and non-image objects."""
import logging
import re

import numpy as np
import pytest

from engine.io.volume import SeriesChoiceError, VolumeReadError, read_volume
from tests.dicom_util import phantom, rotation, write_report, write_series


def _world_equal(vol, src, src_affine):
    """Every voxel of the read volume holds the source's value at the same world position."""
    t = np.linalg.inv(src_affine) @ vol.affine
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    src_idx = idx @ t[:3, :3].T + t[:3, 3]
    assert np.allclose(src_idx, np.round(src_idx), atol=1e-3), "the same grid"
    s = np.round(src_idx).astype(int)
    np.testing.assert_allclose(vol.data.reshape(-1), src[s[:, 0], s[:, 1], s[:, 2]], atol=1e-3)


AFFINES = {
    "axial": np.array([[-0.9, 0, 0, 20], [0, 0.9, 0, -30], [0, 0, 1.5, -10], [0, 0, 0, 1]]),
    # sagittal slices: the volume's third axis runs left-right
    "sagittal": np.array([[0, 0, 1.2, -15], [0.8, 0, 0, -40], [0, -0.8, 0, 50], [0, 0, 0, 1]]),
}
obl = np.eye(4)
obl[:3, :3] = rotation(0, 20) @ np.diag([1.0, 1.0, 2.0])
obl[:3, 3] = (5, -7, 3)
AFFINES["oblique"] = obl
# non-square pixels: swapping PixelSpacing's (row, column) order must fail this one (issue #20)
AFFINES["non-square pixels"] = np.array([[-0.5, 0, 0, 20], [0, 0.8, 0, -30], [0, 0, 1.2, -10], [0, 0, 0, 1]])


@pytest.mark.parametrize("name", list(AFFINES))
def test_series_geometry_matches_the_source(tmp_path, name):
    src = phantom()
    aff = AFFINES[name]
    write_series(tmp_path / name, src, aff)
    vol = read_volume(tmp_path / name, kind="image")
    assert vol.source == "dicom" and vol.shape == src.shape
    np.testing.assert_allclose(sorted(vol.voxel_size), sorted(np.linalg.norm(aff[:3, :3], axis=0)), atol=1e-4)
    _world_equal(vol, src, aff)
    assert "series 1 T1 test" in vol.name
    # any file of the series opens the same series
    one = sorted((tmp_path / name).glob("*.dcm"))[3]
    np.testing.assert_array_equal(read_volume(one, kind="image").data, vol.data)


def test_two_series_in_one_folder_need_a_choice(tmp_path):
    src = phantom()
    write_series(tmp_path / "s", src, AFFINES["axial"], series_number=3, description="T1")
    write_series(tmp_path / "s", src * 0 + 500, AFFINES["axial"], series_number=7, description="FLAIR", prefix="B")
    write_report(tmp_path / "s" / "report.dcm")
    with pytest.raises(SeriesChoiceError, match="2 image series") as info:
        read_volume(tmp_path / "s")
    assert [s.number for s in info.value.series] == ["3", "7"]
    vol = read_volume(tmp_path / "s", series="7")
    assert float(vol.data.max()) == 500 and "FLAIR" in vol.name
    uid = info.value.series[0].uid
    _world_equal(read_volume(tmp_path / "s", series=uid), src, AFFINES["axial"])
    # one file opens its own series, whichever comes first in the folder (a mutation run found this untested)
    assert float(read_volume(sorted((tmp_path / "s").glob("B07_*.dcm"))[2]).data.max()) == 500
    assert "T1" in read_volume(sorted((tmp_path / "s").glob("IM03_*.dcm"))[2]).name


def test_a_multi_frame_object_is_refused_by_name(tmp_path):
    import pydicom

    files = write_series(tmp_path / "mf", phantom(), AFFINES["axial"])
    ds = pydicom.dcmread(str(files[2]))
    ds.NumberOfFrames = 2
    ds.save_as(str(files[2]))
    with pytest.raises(VolumeReadError, match=f"{files[2].name}: a multi-frame"):
        read_volume(tmp_path / "mf", kind="image")


@pytest.mark.parametrize("case,needle", [
    ("missing", "1 slice(s) missing between IM01_0004.dcm and IM01_0006.dcm"),
    ("uneven", "uneven slice spacing"),
    ("compressed", "cannot be decoded here"),
    ("mixed", "mixes slice orientations"),
    ("report_only", "a directory without any DICOM image series (1 DICOM objects that are not images)"),
])
def test_bad_series_are_named_and_explained(tmp_path, case, needle):
    d = tmp_path / case
    src = phantom()
    if case == "missing":
        write_series(d, src, AFFINES["axial"], skip=(5,))
    elif case == "uneven":
        write_series(d, src, AFFINES["axial"], jitter={6: 0.4})
    elif case == "compressed":
        write_series(d, src, AFFINES["axial"], transfer_syntax="1.2.840.10008.1.2.4.50")
    elif case == "mixed":
        uid = "1.2.3.4.5.6.7.8.9"
        write_series(d, src[:, :, :6], AFFINES["axial"], uid=uid)
        tilted = AFFINES["oblique"].copy()
        tilted[:3, 3] += 100
        write_series(d, src[:, :, :6], tilted, uid=uid, prefix="T")
    else:
        d.mkdir()
        write_report(d / "only.dcm")
    with pytest.raises(VolumeReadError, match=re.escape(needle)) as info:
        read_volume(d)
    assert str(d) in str(info.value)


def test_no_patient_data_in_the_volume_or_the_log(tmp_path, caplog):
    write_series(tmp_path / "p", phantom(), AFFINES["axial"])
    with caplog.at_level(logging.DEBUG):
        vol = read_volume(tmp_path / "p")
    text = caplog.text + vol.name + repr(vol.warnings)
    assert "Doe" not in text and "SECRET-ID" not in text


def test_cli_segments_a_dicom_series_to_nifti_with_its_geometry(tmp_path, tiny_model_dir, capsys):
    import nibabel as nib

    from engine.cli import main

    src = phantom((32, 32, 8))
    write_series(tmp_path / "s", src, AFFINES["oblique"], series_number=3)
    write_series(tmp_path / "s", src, AFFINES["axial"], series_number=4, prefix="B")
    assert main(["info", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 image series" in err[0] and "series 3" in err[0]
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(tmp_path / "s"), "--series", "3", "-o", str(out), "--weights",
                 str(tiny_model_dir), "--planes", "axial"]) == 0
    img = nib.load(str(out))
    vol = read_volume(tmp_path / "s", series="3")
    assert img.shape == vol.shape
    np.testing.assert_allclose(img.affine, vol.affine, atol=1e-4)



def test_a_sheared_series_is_refused_naming_the_shift(tmp_path):
    """Issue #20: 0.3 mm of in-plane shift per slice came out 11.7 mm off at the far end, silently."""
    write_series(tmp_path / "shear", phantom(), AFFINES["axial"], shear_mm=0.3)
    with pytest.raises(VolumeReadError, match=r"drift .* mm off the slice normal \(0.30 mm per slice"):
        read_volume(tmp_path / "shear", kind="image")
    write_series(tmp_path / "straight", phantom(), AFFINES["axial"], shear_mm=0.0)
    assert read_volume(tmp_path / "straight", kind="image").shape == phantom().shape
