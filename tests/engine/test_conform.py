"""Geometry where a scan meets a network: any orientation and voxel size gives the same mask.

A phantom brain is defined in world millimetres (nested ellipsoids: white matter, a grey-matter
shell, a CSF shell), then sampled on grids of different orientation and voxel size, as a scanner
would store it. Each copy goes through the real pipeline (Segmenter with a real MXNet block) and
its mask is compared with the others on one common grid.
"""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.io.conform import Conform, resample_axis

# world-space phantom: semi-axes in mm of the brain (CSF outer), GM and WM surfaces
AXES_CSF = np.array([30.0, 36.0, 27.0])
AXES_GM = AXES_CSF - 4
AXES_WM = AXES_CSF - 9
INTENSITY = {1: 60.0, 2: 140.0, 3: 220.0}


def phantom_labels_at(world: np.ndarray) -> np.ndarray:
    """Labels of world points (..., 3)."""
    def inside(axes):
        return ((world / axes) ** 2).sum(-1) <= 1.0

    lab = np.zeros(world.shape[:-1], np.uint8)
    lab[inside(AXES_CSF)] = 1
    lab[inside(AXES_GM)] = 2
    lab[inside(AXES_WM)] = 3
    return lab


def sample(affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of the phantom on a grid; the image is the label intensities, supersampled
    2x2x2 inside each voxel (partial volume, as a scanner records it)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    img = np.zeros(shape, np.float32)
    for o in np.array(np.meshgrid([-0.25, 0.25], [-0.25, 0.25], [-0.25, 0.25])).reshape(3, -1).T:
        w = (idx + o) @ affine[:3, :3].T + affine[:3, 3]
        lab = phantom_labels_at(w)
        img += np.vectorize(lambda v: INTENSITY.get(int(v), 0.0))(lab).astype(np.float32) / 8
    w = idx @ affine[:3, :3].T + affine[:3, 3]
    return img, phantom_labels_at(w)


def grid(codes: str, zooms, extent=(76.0, 88.0, 70.0)):
    """An affine and shape storing the field of view `extent` (mm, x y z) with array axes along
    `codes` (e.g. 'PIR') and voxel sizes `zooms` along those array axes, centred on the origin."""
    from nibabel.orientations import axcodes2ornt

    o = axcodes2ornt(tuple(codes))
    aff = np.zeros((4, 4))
    shape = []
    for i, (world_axis, sign) in enumerate(o):
        world_axis = int(world_axis)
        aff[world_axis, i] = sign * zooms[i]
        shape.append(int(round(extent[world_axis] / zooms[i])))
    aff[3, 3] = 1
    centre = (np.array(shape) - 1) / 2
    aff[:3, 3] = -aff[:3, :3] @ centre
    return aff, tuple(shape)


def test_reorientation_is_a_pure_permutation_and_inverts_exactly():
    rng = np.random.default_rng(0)
    for codes in ("LAS", "RAS", "PIR", "SAR", "ILP"):
        aff, shape = grid(codes, (1.0, 1.0, 1.0))
        geo = Conform.for_grid(shape, aff)
        assert not geo.resampled
        assert geo.reoriented == (codes != "LAS")
        data = rng.random(shape).astype(np.float32)
        work = geo.to_work(data)
        assert work.shape == geo.work_shape
        # the work grid is LAS: check with nibabel what the reoriented affine says
        probs = rng.random((4,) + work.shape).astype(np.float32)
        back = geo.probs_to_native(probs)
        assert back.shape == (4,) + shape
        np.testing.assert_array_equal(geo.to_work(back[2]), probs[2])
        np.testing.assert_array_equal(geo.probs_to_native(work[None])[0], data)


def test_work_grid_is_anatomically_las():
    """Slice k of the work grid's third axis is an axial slice, whatever the storage order: the
    superior half of the phantom, cut off, shows up at high k."""
    aff, shape = grid("PIR", (1.0, 1.0, 1.0))
    img, _ = sample(aff, shape)
    world_z = (np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) @ aff[:3, :3].T
               + aff[:3, 3])[..., 2]
    img[world_z > 10] *= 0.5  # mark the superior part
    geo = Conform.for_grid(shape, aff)
    work = geo.to_work(img)
    top, bottom = work[:, :, -20:], work[:, :, :20]
    assert top[top > 0].mean() < 0.7 * bottom[bottom > 0].mean()
    assert geo.native_axis("axial") == 1  # PIR: the second array axis runs inferior
    assert geo.native_axis("sagittal") == 2 and geo.native_axis("coronal") == 0
    # the work grid's first axis runs to the patient's left: x decreases along it
    x_world = (np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) @ aff[:3, :3].T
               + aff[:3, 3])[..., 0].astype(np.float32)
    xw = geo.to_work(x_world)
    assert xw[0, 5, 5] > xw[-1, 5, 5]


def test_resampling_to_1mm_and_back():
    aff, shape = grid("LAS", (0.8, 0.8, 0.8))
    geo = Conform.for_grid(shape, aff)
    assert geo.resampled and "0.8x0.8x0.8 mm -> 1 mm" in geo.describe()
    assert geo.work_shape == tuple(int(round(n * 0.8)) for n in shape)
    # a smooth field survives the round trip
    x = np.linspace(0, 3, shape[0])[:, None, None] + np.linspace(0, 2, shape[1])[None, :, None] \
        + np.zeros(shape)
    back = geo.probs_to_native(geo.to_work(x.astype(np.float32))[None])[0]
    inner = (slice(3, -3),) * 3
    assert np.abs(back[inner] - x[inner]).max() < 0.02
    # 1.03 mm is within tolerance: no resampling
    assert not Conform.for_grid(shape, grid("LAS", (1.02, 0.98, 1.0))[0]).resampled


def test_resample_axis_fills_outside():
    a = np.arange(5, dtype=np.float32)
    out = resample_axis(a, 0, np.array([-1.0, 0.0, 1.5, 4.0, 4.6]))
    np.testing.assert_allclose(out, [0, 0, 1.5, 4, 0])


def test_partial_slices_map_to_native_slices():
    aff, shape = grid("PIR", (0.8, 0.8, 0.8))
    geo = Conform.for_grid(shape, aff)
    ks = [40, 41]
    needed = geo.work_slices_for("axial", ks)
    assert 1 <= len(needed) <= 4
    full = np.random.default_rng(1).random((4,) + geo.work_shape).astype(np.float32)
    part = geo.probs_to_native(full, "axial", ks)
    whole = geo.probs_to_native(full)
    ax = geo.native_axis("axial")
    np.testing.assert_allclose(np.take(part, ks, axis=ax + 1), np.take(whole, ks, axis=ax + 1), atol=1e-6)


# ----------------------------------------------------------------------------- whole pipeline
@pytest.fixture(scope="module")
def intensity_segmenter():
    """A Segmenter around a real MXNet block that classifies by intensity (a fixed 1x1 'network':
    logits = -(x - mean_c)^2 / width). Deterministic, so any difference between copies of the
    phantom comes from geometry, not from training noise."""
    from engine.core.mx_env import get_mx

    mx = get_mx()
    from engine.infer.inference import Segmenter
    from engine.nets.weights import ModelInfo

    # normalised intensities: the 99th percentile of the brain (WM, 220) is 1.0
    means = [0.0, 60 / 220, 140 / 220, 1.0]

    class IntensityNet(mx.gluon.HybridBlock):
        multiple = 1

        def hybrid_forward(self, F, x):
            return F.concat(*[-((x - m) ** 2) * 40 for m in means], dim=1)

    net = IntensityNet()
    net.initialize()
    return Segmenter.from_network(net, ModelInfo(Path("."), "enet", {}, {"version": "intensity"}))


def _on_reference_grid(labels, affine, ref_affine, ref_shape):
    """Nearest-neighbour look-up of a mask at the voxel centres of a reference grid."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in ref_shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ ref_affine[:3, :3].T + ref_affine[:3, 3]
    vox = np.rint((world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    ok = np.all((vox >= 0) & (vox < np.array(labels.shape)), axis=1)
    out = np.zeros(len(idx), np.uint8)
    out[ok] = labels[tuple(vox[ok].T)]
    return out.reshape(ref_shape)


def test_same_mask_for_any_storage_order_and_voxel_size(intensity_segmenter):
    """One phantom stored LAS 1 mm, in four other axis orders/flips, at 0.8 mm and at 1x1x1.5 mm:
    each mask, brought to the LAS 1 mm grid, agrees with the LAS one. Reoriented copies agree
    exactly; resampled ones to within a stated tolerance: per-tissue Dice against the LAS mask
    >= 0.93 after a nearest-neighbour look-up on the 1 mm grid (a partial-volume boundary voxel
    can go either way, and the phantom's shells are only 4-5 mm thick, 3 voxels at 1.5 mm), and
    each copy's Dice against its own grid's truth within 0.03 of the LAS copy's."""
    from engine.core.metrics import dice_scores
    from engine.infer.inference import SegmentConfig

    seg = intensity_segmenter
    ref_aff, ref_shape = grid("LAS", (1.0, 1.0, 1.0))
    ref_img, ref_truth = sample(ref_aff, ref_shape)
    cfg = SegmentConfig(batch_size=16)
    ref = seg.segment(ref_img, cfg, affine=ref_aff).labels
    ref_dice = dice_scores(ref_truth, ref)
    assert min(ref_dice[k] for k in ("csf", "gm", "wm")) > 0.9
    for codes, zooms in (("PIR", (1, 1, 1)), ("RAS", (1, 1, 1)), ("SAR", (1, 1, 1)), ("ILP", (1, 1, 1)),
                         ("LAS", (0.8, 0.8, 0.8)), ("LAS", (1, 1, 1.5)), ("PIR", (0.8, 1.5, 1.0))):
        aff, shape = grid(codes, zooms)
        img, truth = sample(aff, shape)
        res = seg.segment(img, cfg, affine=aff)
        assert res.labels.shape == shape
        common = _on_reference_grid(res.labels, aff, ref_aff, ref_shape)
        if zooms == (1, 1, 1):
            assert res.geometry.startswith("reoriented") or codes == "LAS"
            np.testing.assert_array_equal(common, ref, err_msg=codes)
        else:
            assert "resampled" in res.geometry
            d = dice_scores(ref, common)
            assert min(d["csf"], d["gm"], d["wm"]) >= 0.93, (codes, zooms, d)
            own = dice_scores(truth, res.labels)
            for k in ("csf", "gm", "wm"):
                assert own[k] >= ref_dice[k] - 0.03, (codes, zooms, k, own, ref_dice)


def test_one_axial_slice_of_a_sagittally_stored_scan(intensity_segmenter):
    """'Segment this slice' on a PIR scan segments an anatomically axial slice: the labels lie
    in one index of the scan's superior-inferior array axis and match the whole-volume run."""
    from engine.infer.inference import SegmentConfig

    seg = intensity_segmenter
    aff, shape = grid("PIR", (1, 1, 1))
    img, _ = sample(aff, shape)
    geo = Conform.for_grid(shape, aff)
    ax = geo.native_axis("axial")
    k = shape[ax] // 2
    one = seg.segment(img, SegmentConfig(slices=(k,), planes=("axial",)), affine=aff).labels
    whole = seg.segment(img, SegmentConfig(planes=("axial",), refine=False), affine=aff).labels
    nz = np.nonzero(one)
    assert set(nz[ax]) == {k}
    np.testing.assert_array_equal(np.take(one, k, axis=ax), np.take(whole, k, axis=ax))


def test_skull_stripped_mask_is_all_tissue(intensity_segmenter):
    """FSL_SEG semantics: every nonzero voxel of a skull-stripped scan gets a tissue label, even one
    darker than the network's idea of CSF; the background stays 0."""
    from engine.infer.inference import SegmentConfig

    aff, shape = grid("LAS", (1, 1, 1))
    img, _ = sample(aff, shape)
    img[(img > 0) & (img < 30)] = 20.0  # very dark rim voxels, nearer background than CSF
    res = intensity_segmenter.segment(img, SegmentConfig(), affine=aff)
    assert np.all((res.labels > 0) == (img > 0))
    off = intensity_segmenter.segment(img, SegmentConfig(tissue_inside_mask=False), affine=aff)
    assert np.any((off.labels == 0) & (img > 0))


def test_saved_mask_carries_the_input_affine(tmp_path, tiny_model_dir):
    from engine.cli import main

    aff, shape = grid("PIR", (0.8, 1.5, 1.0))
    img, _ = sample(aff, shape)
    p = tmp_path / "pir.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), str(p))
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(p), "-o", str(out), "--weights", str(tiny_model_dir)]) == 0
    m = nib.load(str(out))
    assert m.shape == shape
    np.testing.assert_allclose(m.affine, aff, atol=1e-5)


def test_cli_planes_and_geometry_notes(tmp_path, tiny_model_dir, capsys):
    """`--planes axial` is the single-plane pass; a bad plane is one line and exit 2; an Analyze
    scan is said to be assumed LAS, a resampled one to be resampled."""
    from engine.cli import main
    from engine.io.volume import save_image

    aff, shape = grid("LAS", (1.0, 1.0, 1.0))
    img, _ = sample(aff, shape)
    hdr = tmp_path / "scan.hdr"
    import nibabel as nib

    nib.save(nib.AnalyzeImage(img.astype(np.int16), np.diag([-1.0, 1, 1, 1])), str(hdr))
    out = tmp_path / "m.nii.gz"
    assert main(["segment", str(hdr), "-o", str(out), "--weights", str(tiny_model_dir), "--planes", "axial"]) == 0
    cap = capsys.readouterr()
    assert "(axial)" in cap.out and "assumed LAS" in cap.err
    assert main(["segment", str(hdr), "-o", str(out), "--weights", str(tiny_model_dir), "--planes", "axial,oblique"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "oblique" in err[0] and "axial, coronal, sagittal" in err[0]
    aff08, shape08 = grid("LAS", (0.8, 0.8, 0.8))
    p08 = tmp_path / "s08.nii.gz"
    save_image(p08, sample(aff08, shape08)[0], aff08)
    assert main(["segment", str(p08), "-o", str(out), "--weights", str(tiny_model_dir), "--planes", "axial"]) == 0
    assert "resampled 0.8x0.8x0.8 mm -> 1 mm" in capsys.readouterr().err


def test_voxel_sizes_in_the_wrong_units_are_refused(tmp_path):
    from engine.io.volume import VolumeReadError, read_volume

    p = tmp_path / "metres.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.diag([0.001, 0.001, 0.001, 1])), str(p))
    with pytest.raises(VolumeReadError, match="metres.nii.gz.*voxel size 0.001x0.001x0.001 mm"):
        read_volume(p)
    with pytest.raises(ValueError, match="outside"):
        Conform.for_grid((8, 8, 8), np.diag([20.0, 1, 1, 1]))


def test_many_slices_run_in_batches_and_can_be_cancelled(intensity_segmenter):
    from engine.core.cancel import Cancelled, CancelToken
    from engine.infer.inference import SegmentConfig

    aff, shape = grid("LAS", (1, 1, 1))
    img, _ = sample(aff, shape)
    ks = tuple(range(10, 60))
    seen = []
    res = intensity_segmenter.segment(img, SegmentConfig(slices=ks, batch_size=8), affine=aff,
                                      progress=lambda d, t: seen.append((d, t)))
    assert len(seen) >= 50 // 8 and seen[-1][0] == seen[-1][1] == res.slices_run
    tok = CancelToken()
    calls = []

    def cancel_after_first(d, t):
        calls.append(d)
        if d > 0:
            tok.cancel()

    with pytest.raises(Cancelled):
        intensity_segmenter.segment(img, SegmentConfig(slices=ks, batch_size=8), affine=aff,
                                    progress=cancel_after_first, cancel=tok)
    assert max(calls) < len(ks)


def test_a_zero_padded_head_with_its_skull_is_not_taken_as_skull_stripped():
    from engine.infer.inference import skull_stripped

    head = np.zeros((200, 240, 200), np.float32)
    head[20:180, 20:220, 20:180] = 100.0  # 5.1 L of nonzero voxels inside zero padding
    assert not skull_stripped(head, 0.001)
    brain = np.zeros((176, 208, 176), np.float32)
    brain[40:136, 40:168, 40:136] = 100.0  # 1.2 L: a brain with its CSF
    assert skull_stripped(brain, 0.001)
