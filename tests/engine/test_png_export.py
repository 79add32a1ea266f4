"""PNG export as people look at it: class colours, over the scan, on-screen (radiological)
orientation, square pixels, any plane, single images or a montage; `brainseg png` with bad input."""
import imageio.v2 as imageio
import numpy as np
import pytest

from engine.cli import main
from engine.core.classes import tissue_classes
from engine.io.export import export_png, render_slice
from engine.io.volume import save_image, save_labels

RGB = {tc.value: tuple(tc.rgb) for tc in tissue_classes()}


def _las(shape=(20, 24, 10), zooms=(1.0, 1.0, 1.0)):
    aff = np.diag(list(zooms) + [1.0])
    aff[0, 0] = -zooms[0]  # LAS: array x runs to the patient's left
    lab = np.zeros(shape, np.uint8)
    lab[2:6, 10:14, 3:7] = 3  # near the patient's right (low x in LAS)
    lab[14:18, 10:14, 3:7] = 1  # near the patient's left
    scan = np.where(lab > 0, 100.0, 0.0).astype(np.float32) + 20
    return lab, scan, aff


def test_axial_slice_is_in_colour_and_radiological():
    lab, _, aff = _las()
    img = render_slice(lab, aff, "axial", 5)
    assert img.shape == (24, 20, 3) and img.dtype == np.uint8
    assert img.max() > 3, "colours, not the class values 0-3"
    # radiological: patient's right (WM) on the image's left, patient's left (CSF) on the right
    rows, cols = np.where((img == RGB[3]).all(axis=2))
    assert cols.max() < 10
    rows, cols = np.where((img == RGB[1]).all(axis=2))
    assert cols.min() >= 10
    # anterior up: array y increases anteriorly, so y=10-13 lands at rows 24-1-13..24-1-10
    assert rows.min() == 10 and rows.max() == 13


def test_overlay_on_scan_and_square_pixels_for_thick_slices():
    lab, scan, aff = _las(zooms=(1.0, 1.0, 3.0))
    img = render_slice(lab, aff, "coronal", 12, scan=scan, opacity=0.5)
    assert img.shape == (30, 20, 3), "10 slices of 3 mm are drawn 30 pixels tall"
    assert (img[0, 0] == img[0, 0, 0]).all(), "background is the grey scan"
    wm = img[(lab[:, 12, :] == 3).T[::-1].repeat(3, axis=0)]
    assert len(wm) and not (wm == wm[:, :1]).all(), "labelled pixels are tinted"


def test_files_single_and_montage(tmp_path):
    lab, scan, aff = _las()
    files = export_png(lab, aff, tmp_path / "ax", plane="sagittal", scan=scan)
    assert len(files) == 20 and files[0].name == "sagittal_001.png"
    assert imageio.imread(files[3]).shape[2] == 3
    (m,) = export_png(lab, aff, tmp_path / "m", plane="axial", montage=True, panels=4)
    im = imageio.imread(m)
    assert m.name == "axial_montage.png" and im.shape[:2] == (2 * 24 + 22, 560)  # tiles, then the legend
    # the legend holds each class's colour (issue #19: montages had no legend)
    from engine.core.classes import tissue_classes

    legend = im[2 * 24:].reshape(-1, 3)
    for tc in tissue_classes()[1:]:
        assert (legend == np.asarray(tc.rgb, np.uint8)).all(axis=1).any(), tc.name
    # and the orientation letters in the light blue the app's views use (not in the tiles' colours)
    tiles = im[: 2 * 24, :40].astype(int)
    assert ((tiles[..., 2] > tiles[..., 0] + 60) & (tiles[..., 1] > 100)).any()
    with pytest.raises(ValueError, match="scan is"):
        export_png(lab, aff, tmp_path / "x", scan=scan[:, :, :5])


def test_png_cli(tmp_path, capsys):
    lab, scan, aff = _las()
    save_labels(tmp_path / "m.nii.gz", lab, aff)
    save_image(tmp_path / "s.nii.gz", scan, aff)
    assert main(["png", str(tmp_path / "m.nii.gz"), "--scan", str(tmp_path / "s.nii.gz"), "--plane", "coronal",
                 "--montage", "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "coronal_montage.png").exists()
    assert "wrote 1 PNG file to" in capsys.readouterr().out
    assert main(["png", str(tmp_path / "m.nii.gz"), "--values", "-o", str(tmp_path / "vals")]) == 0
    assert imageio.imread(tmp_path / "vals" / "slice_000.png").max() <= 3
    save_image(tmp_path / "small.nii.gz", scan[:, :, :5], aff)
    for argv, needle in (
        (["--scan", str(tmp_path / "small.nii.gz")], "is 20x24x5 but"),
        (["--plane", "oblique"], "invalid choice"),
        (["--opacity", "2"], "from 0 to 1"),
    ):
        assert main(["png", str(tmp_path / "m.nii.gz"), "-o", str(tmp_path / "bad")] + argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert main(["png", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "bad")]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err
