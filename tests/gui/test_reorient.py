"""View > Reorient scan... (issue #18): the demo brain stored sagittally in a NIfTI whose header
wrongly says LAS (so it opens as stored, with a warning); the dialog shows LAS from the header, the
anatomy's answer fills in A, S, L, the preview shows the brain as the views would, and the saved copy
has the same voxels under an ASL header. The scan's own file is never written; a letter pair used
twice disables Save and says why."""
import nibabel as nib
import numpy as np
import pytest
from PyQt5 import QtCore

from engine.core.paths import DEMO_SCAN
from engine.io.orientation import ViewGeometry
from engine.io.volume import read_volume


@pytest.fixture(scope="module")
def sagittal(tmp_path_factory):
    """(path, stored array, demo volume): array axes A, S, L under a header that says LAS, code 1."""
    demo = read_volume(DEMO_SCAN)
    stored = np.transpose(demo.data, (1, 2, 0)).astype(np.int16)
    aff = np.diag([-1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = [103.5, -88.0, -87.5]
    img = nib.Nifti1Image(stored, aff)
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    path = tmp_path_factory.mktemp("reorient") / "sag.nii.gz"
    nib.save(img, str(path))
    return path, stored, demo


def _open_dialog(window, path):
    assert window.open_scan(path)
    window.actions["reorient"].trigger()
    dlg = window.reorient_dialog
    assert dlg.isVisible()
    return dlg


def _codes(dlg) -> str:
    return "".join(c.currentData() for c in dlg.combos)


def test_anatomy_fills_the_axes_and_the_copy_has_the_same_voxels(window, dialogs, sagittal, tmp_path, qtbot,
                                                                 monkeypatch):
    path, stored, demo = sagittal
    before = path.read_bytes()
    assert not window.actions["reorient"].isEnabled(), "nothing to reorient without a scan"
    dlg = _open_dialog(window, path)
    assert window.scan.orientation == "LAS" and window.scan.orientation_source == "header"
    assert "<b>LAS</b>" in dlg.current_label.text()
    assert "header" in dlg.source_label.text() and "anatomy looks like ASL" in dlg.source_label.text()
    assert _codes(dlg) == "LAS"
    assert dlg.preview_edges["axial"] == {"left": "R", "right": "L", "top": "A", "bottom": "P"}

    qtbot.mouseClick(dlg.anatomy_button, QtCore.Qt.LeftButton)
    assert _codes(dlg) == "ASL"
    assert "ASL" in dlg.anatomy_label.text() and "Left and right are kept" in dlg.anatomy_label.text()
    assert dlg.save_button.isEnabled() and dlg.problem_label.isHidden()
    # the preview shows the brain as the views show the demo (which is stored LAS, the right way up)
    for view in ("axial", "coronal", "sagittal"):
        g = ViewGeometry.for_view(view, demo.affine, demo.shape)
        lo, hi = dlg.levels
        want = (np.clip((g.display(demo.data, g.n_slices // 2) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
        assert np.array_equal(dlg.preview_images[view], want), view
        assert dlg.preview_edges[view] == g.edges
        assert not dlg.thumbs[view].pixmap().isNull()

    offered = []
    monkeypatch.setattr("brainseg_gui.dialogs.get_save_path",
                        lambda parent, title, filters, directory="": (offered.append(directory), dialogs.save_path)[1])
    dialogs.save_path = str(tmp_path / "fixed")  # no suffix: .nii.gz is added
    dialogs.yes = True  # open the copy
    dlg.save_button.click()
    assert offered == [str(path.with_name("sag_reoriented.nii.gz"))], "default: beside the scan, never over it"
    copy = tmp_path / "fixed.nii.gz"
    assert path.read_bytes() == before, "the scan's own file is never written"
    vol = read_volume(copy)
    assert vol.orientation == "ASL" and vol.orientation_source == "header"
    assert vol.warnings == [], "the anatomy now agrees with the header"
    assert np.array_equal(vol.data, stored) and vol.source_dtype == "int16"
    assert np.allclose(vol.voxel_size, (1, 1, 1))
    hdr = nib.load(str(copy)).header
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    centre = (np.array(stored.shape) - 1) / 2
    old = nib.load(str(path)).affine
    assert np.allclose(vol.affine[:3, :3] @ centre + vol.affine[:3, 3], old[:3, :3] @ centre + old[:3, 3])
    # offered to open it, and did; the dialog follows the scan now open
    assert window.scan.path == copy and window.scan.orientation == "ASL"
    assert "<b>ASL</b>" in dlg.current_label.text() and _codes(dlg) == "ASL"
    assert "Saved" in dlg.saved_label.text()


def test_the_scans_own_file_is_refused_and_a_pair_used_twice_disables_save(window, dialogs, sagittal):
    path, _, _ = sagittal
    before = path.read_bytes()
    dlg = _open_dialog(window, path)
    dlg.set_codes("ASL")
    dialogs.save_path = str(path)
    dlg.save_button.click()
    assert dialogs.errors and "scan's own file" in dialogs.errors[-1]
    assert dialogs.questions == [] and path.read_bytes() == before
    assert dlg.save_copy(str(path)[: -len(".nii.gz")]) is None, "the same file named without its suffix"
    assert path.read_bytes() == before

    # k towards A as well as j: A/P twice, S/I never
    dlg.combos[2].setCurrentIndex(dlg.combos[2].findData("P"))
    assert _codes(dlg) == "ASP"
    assert not dlg.save_button.isEnabled()
    assert not dlg.problem_label.isHidden()
    assert "A/P more than once" in dlg.problem_label.text() and "L/R not at all" in dlg.problem_label.text()
    assert dlg.preview_images == {}, "no preview of an impossible orientation"
    dlg.combos[2].setCurrentIndex(dlg.combos[2].findData("R"))
    assert dlg.save_button.isEnabled() and dlg.problem_label.isHidden()
    assert "mirrors the scan" in dlg.result_label.text(), "ASR has the other handedness than LAS"
    dlg.combos[2].setCurrentIndex(dlg.combos[2].findData("L"))
    assert "mirrors" not in dlg.result_label.text()


def test_the_source_of_an_orientation_found_from_the_anatomy_is_said_once():
    """The dialog's source line for a scan oriented from its anatomy (a silent Analyze header) reads
    "Found from the anatomy: stored ASL, ..." - not the engine's note with the same words again."""
    from types import SimpleNamespace

    from brainseg_gui.dialogs.reorient_dialog import ReorientDialog
    from engine.io.anatomy import OrientationFinding, describe

    rotation = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]])  # a proper permutation, not the identity
    finding = OrientationFinding(rotation, score=0.9, assumed_score=0.2, template="head", before="LAS", after="ASL")
    assert finding.changed
    note = describe(finding, "Analyze's convention LAS")
    vol = SimpleNamespace(orientation_source="anatomy", geometry_note=note, source="analyze", warnings=[])
    text = ReorientDialog._source_text(vol)
    assert text.startswith("Found from the anatomy: stored ASL, not LAS")
    assert text.lower().count("from the anatomy") == 1
