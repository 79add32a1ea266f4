"""Radiological view geometry from the affine."""
import nibabel as nib
import numpy as np
import pytest

from engine.orientation import ViewGeometry


@pytest.mark.parametrize("codes", ["LAS", "RAS", "LPI", "PIR"])
def test_views_show_radiological_orientation(codes):
    shape = (10, 12, 14)
    aff = np.eye(4)  # an affine whose array axes point to `codes`
    for ax, c in enumerate(codes):
        vec = {"R": [1, 0, 0], "L": [-1, 0, 0], "A": [0, 1, 0], "P": [0, -1, 0], "S": [0, 0, 1], "I": [0, 0, -1]}[c]
        aff[:3, ax] = vec
    assert "".join(nib.aff2axcodes(aff)) == codes
    vol = np.zeros(shape)
    world = lambda v: aff[:3, :3] @ np.array(v) + aff[:3, 3]  # noqa: E731
    ax = ViewGeometry.for_view("axial", aff, shape)
    assert ax.edges == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    img = ax.display(vol, 0)
    nr, nc = img.shape
    # moving right on screen goes towards patient left (world x decreases in RAS)
    a = world(ax.voxel_from_display(nr // 2, 1, 0))
    b = world(ax.voxel_from_display(nr // 2, nc - 2, 0))
    assert b[0] < a[0]
    # moving down goes posterior
    a = world(ax.voxel_from_display(1, nc // 2, 0))
    b = world(ax.voxel_from_display(nr - 2, nc // 2, 0))
    assert b[1] < a[1]
    sag = ViewGeometry.for_view("sagittal", aff, shape)
    a = world(sag.voxel_from_display(1, 3, 0))
    b = world(sag.voxel_from_display(5, 3, 0))
    assert b[2] < a[2], "superior is up"


def test_display_and_voxel_roundtrip_and_spacing():
    aff = np.diag([-1.0, 1.0, 1.25, 1.0])
    vol = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    for view in ("axial", "coronal", "sagittal"):
        g = ViewGeometry.for_view(view, aff, vol.shape)
        k = 2
        img = g.display(vol, k)
        for r in range(img.shape[0]):
            for c in range(img.shape[1]):
                assert vol[g.voxel_from_display(r, c, k)] == img[r, c]
    cor = ViewGeometry.for_view("coronal", aff, vol.shape)
    assert cor.row_spacing == 1.25 and cor.col_spacing == 1.0
