"""Reading OASIS-layout files the tests write themselves, NIfTI, and every kind of bad input."""
import nibabel as nib
import numpy as np
import pytest

from engine.volume import OASIS_SHAPE, VolumeReadError, read_volume, save_labels


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
          "not an image": "", "missing": "no such file"}


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
    assert "Analyze cannot store this affine" in caplog.text


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "keep.nii.gz"
    save_labels(p, np.ones((4, 4, 4), np.uint8), np.eye(4))
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(Exception):
        save_labels(p, np.zeros((4, 4, 4), np.uint8), np.eye(4))
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["keep.nii.gz"], "no temporary files left behind"
