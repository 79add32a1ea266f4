"""A DICOM series in the window: File > Open DICOM folder, a choice when the folder holds two
series, drag and drop of the folder, and the mask saved as NIfTI with the series' geometry."""
import nibabel as nib
import numpy as np
from PyQt5 import QtCore, QtGui, QtWidgets

from tests.dicom_util import phantom, write_series

AFF = np.array([[0, 0, 1.2, -15], [0.8, 0, 0, -40], [0, -0.8, 0, 50], [0, 0, 0, 1.0]])  # sagittal slices


def test_open_a_dicom_folder_choose_a_series_and_save_nifti(window, tmp_path, dialogs, qtbot):
    src = phantom((40, 44, 16))
    write_series(tmp_path / "dcm", src, AFF, series_number=2, description="T1 MPRAGE")
    write_series(tmp_path / "dcm", src * 0 + 300, AFF, series_number=5, description="localizer", prefix="L")
    dialogs.directory = str(tmp_path / "dcm")
    dialogs.choice = None  # the default answer: the first series
    window.actions["open_dicom"].trigger()
    assert dialogs.questions and "holds 2 image series" in dialogs.questions[-1]
    assert window.scan is not None and window.scan.source == "dicom" and "T1 MPRAGE" in window.windowTitle()
    assert window.scan.shape == src.shape
    # the views show it in radiological orientation from the DICOM geometry
    assert window.views["sagittal"].geometry_.axis == 2
    lm = window.session.ensure_labelmap()
    lm.paint("axial", 5, [(10, 10)], 3, 2)
    path = window.default_labels_path()
    assert path.parent == tmp_path and path.name == "dcm_s2_brainseg_seg.nii.gz", "beside the series, named by it"
    assert window.save_labels_to(path)
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, window.scan.affine, atol=1e-5)
    # dropping the folder asks again; cancelling keeps the open scan
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(tmp_path / "dcm"))])
    dialogs.choice = "cancel"
    drop = QtGui.QDropEvent(QtCore.QPointF(10, 10), QtCore.Qt.CopyAction, mime, QtCore.Qt.LeftButton,
                            QtCore.Qt.NoModifier)
    QtWidgets.QApplication.sendEvent(window, drop)
    assert "T1 MPRAGE" in window.windowTitle(), "cancelled: the open scan stays"
