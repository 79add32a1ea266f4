"""Reading OASIS-layout files the tests write themselves, NIfTI, and every kind of bad input."""
import nibabel as nib
import numpy as np
import pytest

import engine.core.atomic
from engine.io.volume import (
    OASIS_SHAPE,
    VolumeReadError,
    VolumeWriteError,
    analyze_geometry_loss,
    atomic_write,
    read_volume,
    save_image,
    save_labels,
)


def _analyze(path, data, zooms=(1.0, 1.0, 1.0), dtype=">i2", singleton=True):
    arr = data[..., None] if singleton else data
    hdr = nib.AnalyzeHeader(endianness=">")
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(arr.shape)
    hdr.set_zooms(tuple(zooms) + ((1.0,) if singleton else ()))
    nib.save(nib.AnalyzeImage(arr.astype(dtype), hdr.get_best_affine(), header=hdr), str(path))
    return path


def test_oasis_image_pair_4d_singleton_either_file(tmp_path):
    data = (np.arange(20 * 24 * 10).reshape(20, 24, 10) % 1000).astype(np.int16)
    p = _analyze(tmp_path / "OAS1_0001_MR1_t88_masked_gfc.hdr", data, zooms=(1.0, 1.0, 1.25))
    ref = nib.load(str(p))
    for given in (p, p.with_suffix(".img")):
        v = read_volume(given)
        assert v.shape == (20, 24, 10) and v.kind == "image" and v.source_dtype == ">i2"
        np.testing.assert_array_equal(v.data, data)
        assert v.voxel_size == pytest.approx((1.0, 1.0, 1.25))
        np.testing.assert_allclose(v.affine, ref.affine)
        assert v.orientation == "".join(nib.aff2axcodes(ref.affine))
        assert v.voxel_volume_ml == pytest.approx(1.25e-3)


def test_fsl_seg_uint8_labels(tmp_path):
    lab = np.random.default_rng(0).integers(0, 4, (16, 18, 8)).astype(np.uint8)
    p = _analyze(tmp_path / "OAS1_0001_MR1_fseg.hdr", lab, dtype="u1")
    v = read_volume(p)
    assert v.kind == "labels" and v.data.dtype == np.uint8
    np.testing.assert_array_equal(v.data, lab)


def test_headerless_oasis_img_layout_inferred(tmp_path):
    data = np.zeros(OASIS_SHAPE, np.int16)
    data[50:60, 70:90, 30:40] = 900
    paired = _analyze(tmp_path / "with_hdr.hdr", data)
    bare = tmp_path / "bare_t88_gfc.img"
    bare.write_bytes(paired.with_suffix(".img").read_bytes())
    v, w = read_volume(bare), read_volume(paired)
    assert v.layout_note and "big-endian int16" in v.layout_note
    np.testing.assert_array_equal(v.data, w.data)
    np.testing.assert_allclose(v.affine, w.affine)
    labels = tmp_path / "bare_fseg.img"
    np.zeros(OASIS_SHAPE, np.uint8).tofile(labels)
    lv = read_volume(labels)
    assert lv.kind == "labels" and "uint8" in lv.layout_note


def test_headerless_seed_u2_layout(tmp_path):
    data = np.zeros(OASIS_SHAPE, ">u2")
    data[10, 10, 10] = 40000  # above int16 range: only the seed's unsigned layout explains it
    p = tmp_path / "seed.img"
    data.ravel(order="F").tofile(p)
    v = read_volume(p)
    assert "uint16" in v.layout_note and v.data[10, 10, 10] == 40000


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti(tmp_path, ext):
    aff = np.array([[-0.9, 0, 0, 90], [0, 1.1, 0, -100], [0, 0, 1.3, -70], [0, 0, 0, 1]])
    data = np.random.default_rng(1).random((12, 14, 9)).astype(np.float32)
    p = tmp_path / f"scan{ext}"
    nib.save(nib.Nifti1Image(data, aff), str(p))
    v = read_volume(p)
    np.testing.assert_allclose(v.affine, nib.load(str(p)).affine)
    assert v.voxel_size == pytest.approx((0.9, 1.1, 1.3)) and v.orientation == "LAS"


def _bad(tmp_path):
    cases = {}
    cases["empty"] = tmp_path / "empty.nii"
    cases["empty"].write_bytes(b"")
    good = _analyze(tmp_path / "good.hdr", np.ones((10, 12, 6), np.int16))
    (tmp_path / "trunc.hdr").write_bytes(good.read_bytes())
    (tmp_path / "trunc.img").write_bytes(good.with_suffix(".img").read_bytes()[:100])
    cases["truncated"] = tmp_path / "trunc.hdr"
    (tmp_path / "big.hdr").write_bytes(good.read_bytes())
    (tmp_path / "big.img").write_bytes(good.with_suffix(".img").read_bytes() + b"\0" * 4096)
    cases["disagree"] = tmp_path / "big.img"
    cases["no layout"] = tmp_path / "odd.img"
    cases["no layout"].write_bytes(b"\0" * 12345)
    nan = np.ones((6, 6, 6), np.float32)
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "nan.nii"))
    cases["NaN"] = tmp_path / "nan.nii"
    inf = np.ones((6, 6, 6), np.float32)
    inf[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(inf, np.eye(4)), str(tmp_path / "inf.nii"))
    cases["inf"] = tmp_path / "inf.nii"
    nib.save(nib.Nifti1Image(np.ones((6, 6), np.float32), np.eye(4)), str(tmp_path / "flat.nii"))
    cases["2-D"] = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 2, 2), np.float32), np.eye(4)), str(tmp_path / "five.nii"))
    cases["5-D"] = tmp_path / "five.nii"
    (tmp_path / "adir").mkdir()
    cases["directory"] = tmp_path / "adir"
    (tmp_path / "text.nii").write_text("hello, I am not an image\n" * 50)
    cases["not an image"] = tmp_path / "text.nii"
    cases["missing"] = tmp_path / "missing.nii.gz"
    return cases


EXPECT = {"empty": "empty", "truncated": "truncated", "disagree": "disagree", "no layout": "fits no known layout",
          "NaN": "NaN", "inf": "infinite", "2-D": "2-D", "5-D": "5-D", "directory": "directory",
          "not an image": "not a readable image", "missing": "no such file"}


def test_every_bad_input_names_file_and_problem(tmp_path):
    for name, path in _bad(tmp_path).items():
        with pytest.raises(VolumeReadError) as ei:
            read_volume(path)
        msg = str(ei.value)
        assert path.name in msg, (name, msg)
        assert EXPECT[name] in msg, (name, msg)


def test_labels_out_of_range_rejected(tmp_path):
    p = tmp_path / "x_seg.nii"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 7, np.uint8), np.eye(4)), str(p))
    with pytest.raises(VolumeReadError, match="expected 0..3"):
        read_volume(p, kind="labels")


@pytest.mark.parametrize("name", ["m.nii.gz", "m_fseg.hdr", "m.nii"])
def test_save_labels_round_trip(tmp_path, name):
    lab = np.random.default_rng(2).integers(0, 4, (10, 12, 8)).astype(np.uint8)
    hdr = nib.AnalyzeHeader()
    hdr.set_data_shape(lab.shape)
    hdr.set_zooms((1.0, 1.0, 1.25))
    aff = hdr.get_best_affine()  # an OASIS scan's affine (Analyze stores only voxel sizes)
    save_labels(tmp_path / name, lab, aff)
    img = nib.load(str(tmp_path / name))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    data = np.asanyarray(img.dataobj)
    if name.endswith(".hdr"):
        assert data.shape == (10, 12, 8, 1), "4-D singleton like OASIS FSL_SEG"
        assert img.header.endianness == ">"
    np.testing.assert_array_equal(data.reshape(lab.shape), lab)
    assert read_volume(tmp_path / name).kind == "labels"


def test_analyze_export_of_unrepresentable_affine_warns(tmp_path, caplog):
    aff = np.diag([1.0, 1.0, 1.0, 1.0])  # RAS with origin 0: Analyze cannot hold it
    save_labels(tmp_path / "x.hdr", np.zeros((4, 4, 4), np.uint8), aff)
    assert "Analyze 7.5 cannot store this scan's orientation" in caplog.text
    assert analyze_geometry_loss(aff, (4, 4, 4))
    header = nib.AnalyzeHeader()
    header.set_data_shape((4, 4, 4))
    assert analyze_geometry_loss(header.get_best_affine(), (4, 4, 4)) is None


@pytest.mark.parametrize("name", ["keep.nii.gz", "keep.hdr"])
def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch, name):
    p = tmp_path / name
    save_labels(p, np.ones((4, 4, 4), np.uint8), np.eye(4))
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(Exception):
        save_labels(p, np.zeros((4, 4, 4), np.uint8), np.eye(4))
    after = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    assert after == before, "old file(s) intact and no temporary files left behind"


def test_interrupted_atomic_write_mid_file(tmp_path):
    p = tmp_path / "stats.csv"
    p.write_text("old\n")

    def half_then_fail(tmp):
        tmp.write_text("new, partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(p, half_then_fail)
    assert p.read_text() == "old\n" and [f.name for f in tmp_path.iterdir()] == ["stats.csv"]


def test_written_files_get_normal_permissions(tmp_path):
    """mkstemp makes 0600 files; what we write must get the umask default (or keep its old mode)."""
    default = 0o666 & ~engine.core.atomic._UMASK
    atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
    save_labels(tmp_path / "m.hdr", np.zeros((3, 3, 3), np.uint8), np.eye(4))
    save_labels(tmp_path / "m.nii.gz", np.zeros((3, 3, 3), np.uint8), np.eye(4))
    for name in ("a.txt", "m.hdr", "m.img", "m.nii.gz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == default, name
    (tmp_path / "a.txt").chmod(0o640)
    atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("y"))
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


def test_save_image_float_nifti_only(tmp_path):
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    unc = np.random.default_rng(3).random((5, 6, 4)).astype(np.float32)
    save_image(tmp_path / "u.nii.gz", unc, aff)
    img = nib.load(str(tmp_path / "u.nii.gz"))
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, aff)
    np.testing.assert_allclose(np.asanyarray(img.dataobj), unc)
    with pytest.raises(VolumeWriteError, match="NIfTI"):
        save_image(tmp_path / "u.hdr", unc, aff)
    assert not (tmp_path / "u.hdr").exists()


def test_fsl_seg_geometry_matches_nibabel(tmp_path):
    lab = np.zeros((8, 10, 6), np.uint8)
    lab[2:6, 3:7, 1:5] = 2
    p = _analyze(tmp_path / "x_fseg.hdr", lab, zooms=(1.0, 1.0, 1.25), dtype="u1")
    ref = nib.load(str(p))
    assert ref.shape == (8, 10, 6, 1)
    v = read_volume(p.with_suffix(".img"))
    assert v.kind == "labels" and v.source_dtype == "uint8" and v.shape == (8, 10, 6)
    assert v.voxel_size == pytest.approx(ref.header.get_zooms()[:3])
    assert v.orientation == "".join(nib.aff2axcodes(ref.affine))


def test_recovery_files_and_the_data_folder_are_private(tmp_path, monkeypatch):
    """Autosaved labels of a patient's scan are the user's only: 0600 files in 0700 folders."""
    import stat

    from engine.io import recovery

    monkeypatch.setenv("BRAINSEG_HOME", str(tmp_path / "home"))
    p = recovery.save_recovery(tmp_path / "scan.nii.gz", np.zeros((4, 4, 4), np.uint8), [1], 1, None)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700


KILL_CHILD = """
import os, sys
import numpy as np
import engine.io.volume as v
path, when = sys.argv[1], sys.argv[2]
real_replace, real_fsync = os.replace, v.fsync_file
n = {"replace": 0}
def replace(a, b):
    real_replace(a, b)
    n["replace"] += 1
    if when == f"after-rename-{n['replace']}":
        os.kill(os.getpid(), 9)
def fsync_file(p):
    if when == "halves-written" and str(p).endswith(".img"):
        os.kill(os.getpid(), 9)
    if when == "journal-written" and str(p).endswith("pair-pending"):
        os.kill(os.getpid(), 9)
    real_fsync(p)
os.replace, v.fsync_file = replace, fsync_file
v.save_labels(path, np.full((6, 7, 5), 2, np.uint8), np.diag([-1.0, 1, 1, 1]))
"""


@pytest.mark.parametrize("when, expect", [("halves-written", 1), ("journal-written", 2), ("after-rename-1", 2),
                                         ("after-rename-2", 2)])
def test_analyze_pair_survives_kill_9_at_any_point(tmp_path, when, expect):
    """kill -9 while an Analyze pair is being replaced: opening it afterwards gives the old pair or
    the new one, never a new .img with an old .hdr."""
    import subprocess
    import sys

    path = tmp_path / "mask_fseg.hdr"
    save_labels(path, np.full((6, 7, 5), 1, np.uint8), np.diag([-1.0, 1, 1, 1]))
    r = subprocess.run([sys.executable, "-c", KILL_CHILD, str(path), when], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == -9, r.stderr
    vol = read_volume(path, kind="labels")
    assert vol.shape == (6, 7, 5) and np.unique(vol.data).tolist() == [expect]
    assert not list(tmp_path.glob(".*pair-pending"))


@pytest.mark.parametrize("name,dtype,values,kind", [
    ("scan.nii.gz", "float32", (0, 1, 2, 3), "image"),  # whole numbers 0-3 but neither uint8 nor label-named
    ("scan.nii.gz", "int16", (0, 1, 2, 3), "image"),
    ("volume.nii.gz", "uint8", (0, 1, 2, 3), "labels"),  # uint8 in range: labels whatever the name
    ("volume.nii.gz", "uint8", (0, 1, 7), "image"),  # out of range
    ("OAS1_0001_fseg.nii.gz", "int16", (0, 1, 2, 3), "labels"),  # label-named, whole numbers in range
    ("OAS1_0001_fseg.nii.gz", "float32", (0, 1.5, 3), "image"),  # not whole numbers
    ("OAS1_0001_fseg.nii.gz", "int16", (-1, 0, 2), "image"),  # negative
])
def test_kind_guessed_from_name_type_and_range(tmp_path, name, dtype, values, kind):
    """read_volume without a kind: a label map is uint8 or named like one (LABEL_SUFFIXES), with
    whole values 0-3; anything else is a scan (asymmetric, non-cubic arrays)."""
    rng = np.random.default_rng(5)
    arr = rng.choice(np.array(values, dtype=np.float64), size=(9, 11, 7)).astype(dtype)
    img = nib.Nifti1Image(arr, np.diag([1.0, 1.2, 2.0, 1.0]))
    img.header.set_data_dtype(dtype)
    nib.save(img, str(tmp_path / name))
    assert read_volume(tmp_path / name).kind == kind
