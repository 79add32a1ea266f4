"""Radiological view geometry from the affine."""
import nibabel as nib
import numpy as np
import pytest

from engine.io.orientation import ViewGeometry

# Radiological convention, written down here independently of engine/io/orientation.py: where a
# step to the right / down on screen goes in the patient (RAS world: +x = R, +y = A, +z = S).
EXPECTED = {"axial": ("L", "P"), "coronal": ("L", "I"), "sagittal": ("P", "I")}
OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


def _letter(vec) -> str:
    """The anatomical direction of a world vector (its dominant axis and sign)."""
    ax = int(np.argmax(np.abs(vec)))
    positive = int(vec[ax] > 0)
    return ("LR", "PA", "IS")[ax][positive]


@pytest.mark.parametrize("codes", ["LAS", "RAS", "LPI", "PIR", "SAR", "ILP"])
@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_views_show_radiological_orientation(codes, view):
    """For any storage order, a step right / down on screen moves the way the radiological
    convention says (checked in world coordinates), and the edge letters name those directions."""
    shape = (10, 12, 14)
    aff = np.eye(4)  # an affine whose array axes point to `codes`, with unequal voxel sizes
    for ax, c in enumerate(codes):
        vec = {"R": [1, 0, 0], "L": [-1, 0, 0], "A": [0, 1, 0], "P": [0, -1, 0], "S": [0, 0, 1], "I": [0, 0, -1]}[c]
        aff[:3, ax] = np.array(vec) * (1.0 + 0.25 * ax)
    assert "".join(nib.aff2axcodes(aff)) == codes
    world = lambda v: aff[:3, :3] @ np.array(v, float) + aff[:3, 3]  # noqa: E731
    g = ViewGeometry.for_view(view, aff, shape)
    nr, nc = g.display(np.zeros(shape), 0).shape
    k = g.n_slices // 2
    right = world(g.voxel_from_display(nr // 2, nc - 2, k)) - world(g.voxel_from_display(nr // 2, 1, k))
    down = world(g.voxel_from_display(nr - 2, nc // 2, k)) - world(g.voxel_from_display(1, nc // 2, k))
    assert (_letter(right), _letter(down)) == EXPECTED[view]
    assert g.edges == {"right": _letter(right), "left": OPPOSITE[_letter(right)],
                       "bottom": _letter(down), "top": OPPOSITE[_letter(down)]}
    # the fixed axis is the one normal to the view: moving between slices leaves the screen plane
    normal = world([1 if a == g.axis else 0 for a in range(3)]) - world([0, 0, 0])
    assert abs(np.dot(normal, right)) < 1e-9 and abs(np.dot(normal, down)) < 1e-9


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
