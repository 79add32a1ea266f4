"""Brain extraction (engine/infer/strip.py, engine/infer/scan.py): the decision, the geometry of the
2 mm work grid, the CLI and batch plumbing with a tiny untrained extractor (real MXNet), and the
shipped extractor on a phantom head in several orientations and voxel sizes."""
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from engine.infer import scan as scan_mod
from engine.infer.strip import STRIP_GRID, StripGrid, clean_mask


def phantom_head(shape=(96, 112, 100), zooms=(2.0, 2.0, 2.0), seed=0):
    """(head image, intracranial mask), LAS at `zooms`: an asymmetric ellipsoidal brain (GM rim,
    WM core, ventricles) in CSF, inside dark bone with bright marrow, bright scalp, a neck below
    and a nose in front; Rician-like noise in the air. World mm, so any voxel size gives the same head."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(np.float32)
    c = (np.array(shape) - 1) / 2
    x, y, z = [(idx[i] - c[i]) * zooms[i] for i in range(3)]  # mm from the centre
    x = -x  # LAS: array x runs right to left
    r = np.sqrt((x / 68) ** 2 + ((y - 5) / 85) ** 2 + ((z - 15) / 62) ** 2)  # intracranial, front wider
    ic = r <= 1.0
    head = np.zeros(shape, np.float32)
    inner = np.sqrt((x / 62) ** 2 + ((y - 5) / 78) ** 2 + ((z - 15) / 56) ** 2)
    head[ic] = 30  # CSF
    head[inner <= 1.0] = 80  # GM
    head[inner <= 0.8] = 120  # WM
    head[(np.abs(x) < 8) & (np.abs(y - 5) < 20) & (np.abs(z - 20) < 10)] = 30  # ventricles
    for lo, hi, v in ((1.0, 1.05, 8), (1.05, 1.11, 90), (1.11, 1.15, 8), (1.15, 1.25, 150)):
        head[(r > lo) & (r <= hi)] = v  # inner table, marrow, outer table, scalp
    neck = (np.sqrt((x / 45) ** 2 + ((y + 10) / 45) ** 2) <= 1) & (z < -30) & (head == 0)
    head[neck] = 70
    nose = (np.sqrt((x / 15) ** 2 + ((y - 100) / 15) ** 2 + ((z + 10) / 25) ** 2) <= 1) & (head == 0)
    head[nose] = 70
    head = np.sqrt((head + rng.normal(0, 3, shape)) ** 2 + rng.normal(0, 3, shape) ** 2)
    return head.astype(np.float32), ic


def las(zooms, shape):
    aff = np.diag([-zooms[0], zooms[1], zooms[2], 1.0])
    aff[:3, 3] = -aff[:3, :3] @ ((np.array(shape) - 1) / 2)
    return aff


@pytest.fixture(scope="module")
def tiny_strip_dir(tmp_path_factory):
    from engine.core.mx_env import get_mx

    mx = get_mx()
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir

    d = tmp_path_factory.mktemp("strip_model")
    kw = {"classes": 2, "base": 4, "levels": 5}
    net = get_model("unet", **kw)
    net.initialize(mx.init.Xavier(magnitude=6))
    net(mx.nd.zeros((1, 3, 32, 32)))
    write_model_dir(d, net, "unet", kw, version="tiny-strip")
    return d


def test_work_grid_is_the_same_head_whatever_the_storage():
    """The 2 mm RAS grid puts the same world point in the same voxel for LAS 2 mm and a sagittal
    1.5 mm copy of one head."""
    head, _ = phantom_head()
    a = las((2.0, 2.0, 2.0), head.shape)
    g = StripGrid.for_scan(head, a)
    w1 = g.from_scan(head, a)
    # the same head stored sagittally (array axes A, S, L) at 1.5 mm in-plane
    fine = ndi.zoom(head, (1.0, 2 / 1.5, 2 / 1.5), order=1)
    sag = np.transpose(fine, (1, 2, 0))
    aff = np.zeros((4, 4))
    aff[1, 0], aff[2, 1], aff[0, 2], aff[3, 3] = 1.5, 1.5, -2.0, 1.0
    aff[:3, 3] = a[:3, 3]  # the same first voxel as the LAS copy
    w2 = g.from_scan(sag, aff)
    inside = (w1 > 20) & (w2 > 20)
    assert w1.shape == (STRIP_GRID,) * 3 and inside.sum() > 20_000
    assert np.corrcoef(w1[inside], w2[inside])[0, 1] > 0.9


def test_a_brain_with_no_skull_or_scalp_around_part_of_it_is_flagged_unsure():
    """A whole head keeps skull and scalp between brain and air; a field of view that cuts the top
    of the head inside the array, or a scan stripped already, leaves the brain against the air: the
    extraction says it is unsure and why (the edge-of-array test cannot see a cut inside the array)."""
    from engine.infer.strip import BARE_FRACTION, assess, bare_fraction

    head, ic = phantom_head()  # 2 mm: the work grid's voxel size
    work = np.clip(head / np.percentile(head[head > 0], 98), 0, 2)
    prob = ic.astype(np.float32)
    whole = bare_fraction(prob, work)
    assert whole == 0.0
    assert not any("skull or scalp" in r for r in assess(ic, prob, 0.008, whole)[3])
    top = np.where(ic.any((0, 1)))[0].max()
    cut, cut_ic = work.copy(), ic.copy()
    cut[:, :, top - 10:] = 0  # the top 20 mm of the brain (and all above it) outside the field of view
    cut_ic[:, :, top - 10:] = False
    frac = bare_fraction(cut_ic.astype(np.float32), cut)
    assert frac > BARE_FRACTION
    reasons = assess(cut_ic, cut_ic.astype(np.float32), 0.008, frac)[3]
    assert any("no skull or scalp around it" in r and f"{frac:.0%}" in r for r in reasons), reasons
    stripped = np.where(ic, work, 0)
    assert bare_fraction(prob, stripped) > 0.9


def test_clean_mask_keeps_the_largest_piece_and_fills_holes():
    p = np.zeros((30, 30, 30), np.float32)
    p[5:20, 5:20, 5:20] = 0.9
    p[10:12, 10:12, 10:12] = 0.1  # a hole
    p[25:28, 25:28, 25:28] = 0.9  # an island
    m = clean_mask(p)
    assert m[11, 11, 11] and not m[26, 26, 26] and m.sum() == 15**3


def test_stripped_scan_is_left_alone_and_never_loads_the_extractor(monkeypatch):
    from engine.core.paths import DEMO_SCAN
    from engine.io.volume import read_volume

    vol = read_volume(DEMO_SCAN)

    def boom(*a, **k):
        raise AssertionError("the extractor was loaded for a skull-stripped scan")

    monkeypatch.setattr(scan_mod, "get_extractor", boom)
    decision, res = scan_mod.extract(vol.data, vol.affine, "auto")
    assert res is None and not decision.run and "already skull-stripped" in decision.reason
    head, _ = phantom_head()
    d = scan_mod.decide_strip(head, las((2, 2, 2), head.shape), "auto")
    assert d.run and "skull found" in d.reason
    assert not scan_mod.decide_strip(head, las((2, 2, 2), head.shape), "off").run
    with pytest.raises(ValueError, match="auto, on, off"):
        scan_mod.decide_strip(head, np.eye(4), "maybe")


def test_masked_scan_means_nonzero_is_the_mask():
    data = np.array([[[0.0, 5.0, -3.0, 7.0]]], np.float32)
    mask = np.array([[[True, True, True, False]]])
    out = scan_mod.masked_scan(data, mask)
    assert np.array_equal(out > 0, mask) and out[0, 0, 1] == 5.0


def test_cli_strip_and_segment_with_strip(tmp_path, tiny_strip_dir, tiny_model_dir, monkeypatch, capsys):
    """`brainseg strip` writes a 0/1 mask on the scan's grid; `segment --strip on` labels nothing
    outside the mask it used (--mask-out), keeps the affine; `--strip off` runs without it."""
    from engine.cli import main

    monkeypatch.setattr(scan_mod, "_extractor", None)
    monkeypatch.chdir(tmp_path)
    head, _ = phantom_head(shape=(60, 70, 64), zooms=(3.0, 3.0, 3.0))
    aff = las((3, 3, 3), head.shape)
    nib.save(nib.Nifti1Image(head, aff), "head.nii.gz")
    assert main(["strip", "head.nii.gz", "-o", "mask.nii.gz", "--masked-scan", "brain.nii.gz",
                 "--weights", str(tiny_strip_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = nib.load("mask.nii.gz")
    assert m.shape == head.shape and np.allclose(m.affine, aff)
    assert set(np.unique(np.asarray(m.dataobj))) <= {0, 1}
    assert out["stripped"] and abs(out["intracranial_ml"] - float(np.asarray(m.dataobj).sum()) * 0.027) < 0.5
    masked = np.asarray(nib.load("brain.nii.gz").dataobj)
    assert np.array_equal(masked > 0, np.asarray(m.dataobj) > 0)
    # segment, the extractor chosen by --strip on (the tiny one: loaded through the module cache)
    monkeypatch.setattr(scan_mod, "_extractor", None)
    from engine.infer.strip import BrainExtractor

    monkeypatch.setattr(scan_mod, "get_extractor", lambda model_dir=None: BrainExtractor(tiny_strip_dir))
    assert main(["segment", "head.nii.gz", "-o", "seg.nii.gz", "--weights", str(tiny_model_dir),
                 "--strip", "on", "--mask-out", "used.nii.gz"]) == 0
    err = capsys.readouterr().err
    assert "brain extraction on" in err and "mL intracranial" in err
    seg = np.asarray(nib.load("seg.nii.gz").dataobj)
    used = np.asarray(nib.load("used.nii.gz").dataobj) > 0
    assert not seg[~used].any()  # nothing outside the brain mask
    assert (seg[used] > 0).all()  # FSL_SEG: every voxel inside is a tissue
    assert main(["segment", "head.nii.gz", "-o", "seg_off.nii.gz", "--weights", str(tiny_model_dir),
                 "--strip", "off"]) == 0
    assert "--strip off was given" in capsys.readouterr().err


def test_batch_says_whether_and_how_a_scan_was_stripped(tmp_path, tiny_strip_dir, tiny_model_dir, monkeypatch):
    from engine.batch import ScanItem, process_scan
    from engine.core.paths import DEMO_SCAN
    from engine.infer.strip import BrainExtractor

    monkeypatch.setattr(scan_mod, "_extractor", None)
    monkeypatch.setattr(scan_mod, "get_extractor", lambda model_dir=None: BrainExtractor(tiny_strip_dir))
    head, _ = phantom_head(shape=(60, 70, 64), zooms=(3.0, 3.0, 3.0))
    nib.save(nib.Nifti1Image(head, las((3, 3, 3), head.shape)), str(tmp_path / "head.nii.gz"))
    rows = {}
    for name, path in (("head", tmp_path / "head.nii.gz"), ("demo", DEMO_SCAN)):
        rows[name] = process_scan(ScanItem(name, name, "", str(path)), str(tmp_path / "out"), str(tiny_model_dir))
    assert rows["head"]["status"] == "ok", rows["head"]["error"]
    assert rows["head"]["stripped"] == "yes" and rows["head"]["icv_source"].startswith("brain extraction")
    assert "skull present" not in rows["head"]["qc_flags"]
    assert rows["demo"]["stripped"] == "no" and "skull-stripped input" in rows["demo"]["icv_source"]
    # the columns are in the table's header
    from engine.batch import COLUMNS

    assert {"stripped", "icv_ml", "icv_source"} <= set(COLUMNS)


@pytest.mark.skipif(not (scan_mod.__file__ and __import__("engine.nets.weights", fromlist=["x"])
                         .shipped_model_dir("strip").joinpath("model.params").exists()),
                    reason="no shipped brain extractor")
@pytest.mark.parametrize("zooms,order", [((2.0, 2.0, 2.0), (0, 1, 2)), ((1.5, 1.5, 2.5), (1, 2, 0)),
                                         ((2.5, 1.2, 1.2), (2, 0, 1))])
def test_shipped_extractor_finds_a_phantom_brain(zooms, order):
    """The shipped network on a phantom head it never saw, stored in three orders and voxel sizes
    with a correct affine: the mask is within Dice 0.85 of the phantom's intracranial space (a
    geometric phantom, far from a real head: this guards the pipeline, the figures on real-looking
    heads are in docs/BENCHMARKS.md)."""
    from engine.infer.strip import BrainExtractor

    shape = tuple(int(round(200 / z)) for z in zooms)
    head, ic = phantom_head(shape=shape, zooms=zooms)
    aff = las(zooms, shape)
    # store with the array axes permuted, the affine permuted with them (same world)
    head_s, ic_s = np.transpose(head, order), np.transpose(ic, order)
    aff_s = np.eye(4)
    aff_s[:3, :3] = aff[:3, :3][:, order]
    aff_s[:3, 3] = aff[:3, 3]
    res = BrainExtractor().extract(head_s, aff_s)
    dice = 2 * (res.mask & ic_s).sum() / (res.mask.sum() + ic_s.sum())
    assert dice >= 0.85, (dice, res.summary())


def test_extraction_averages_the_head_with_its_mirror_image(tiny_strip_dir, tmp_path):
    """Test-time flip (on unless the model.json says "flip": false): the brain probability is the
    mean of the network's on the work grid and, mirrored back, on the grid mirrored left-right."""
    import shutil

    from engine.infer.strip import FLIP_AXIS, BrainExtractor, intensity_scale

    shape, zooms = (60, 70, 64), (3.0, 2.6, 2.8)  # not isotropic, not a cube
    head, _ = phantom_head(shape, zooms, seed=3)
    aff = las(zooms, shape)
    grid = StripGrid.for_scan(head, aff)
    work = grid.from_scan(head, aff)
    work = np.clip(work / intensity_scale(work), 0.0, 2.0)

    ex = BrainExtractor(tiny_strip_dir)
    assert ex.flip and FLIP_AXIS == 0
    plain = ex.work_probability(work)
    mirrored = np.flip(ex.work_probability(np.flip(work, 0).copy()), 0)
    assert np.abs(plain - mirrored).max() > 1e-3  # the untrained network is not symmetric
    res = ex.extract(head, aff)
    np.testing.assert_allclose(res.probability, 0.5 * (plain + mirrored), atol=1e-5)

    off = tmp_path / "no-flip"
    shutil.copytree(tiny_strip_dir, off)
    meta = json.loads((off / "model.json").read_text())
    meta["flip"] = False
    (off / "model.json").write_text(json.dumps(meta))
    ex_off = BrainExtractor(off)
    assert not ex_off.flip
    np.testing.assert_allclose(ex_off.extract(head, aff).probability, plain, atol=1e-5)


def test_the_extractor_loads_its_fused_graph_from_the_cache_with_the_same_mask(tiny_strip_dir, tmp_path,
                                                                               monkeypatch):
    """Like the tissue networks (tests/engine/test_graph_cache.py), the extractor's oneDNN-fused
    graph is cached: the second start loads it, and the brain found is the same; the threshold and
    flip of its model.json still apply."""
    from engine.infer.strip import BrainExtractor

    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    shape, zooms = (60, 70, 64), (3.0, 2.6, 2.8)
    head, _ = phantom_head(shape, zooms, seed=5)
    aff = las(zooms, shape)
    built = BrainExtractor(tiny_strip_dir)
    loaded = BrainExtractor(tiny_strip_dir)
    assert type(built.net).__name__ == "UNet" and type(loaded.net).__name__ == "SymbolBlock"
    assert (loaded.threshold, loaded.flip, loaded.version) == (built.threshold, built.flip, built.version)
    a, b = built.extract(head, aff), loaded.extract(head, aff)
    np.testing.assert_array_equal(b.probability, a.probability)
    np.testing.assert_array_equal(b.mask, a.mask)
