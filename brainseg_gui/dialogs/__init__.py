"""Modal questions and messages, in one place so tests can answer them (monkeypatch these)."""
from __future__ import annotations

from PyQt5 import QtWidgets


def show_error(parent, title: str, message: str) -> None:
    QtWidgets.QMessageBox.critical(parent, title, message)


def show_info(parent, title: str, message: str) -> None:
    QtWidgets.QMessageBox.information(parent, title, message)


def ask_yes_no(parent, title: str, message: str, default_yes: bool = False) -> bool:
    buttons = QtWidgets.QMessageBox.Yes | QtWidgets.QMessageBox.No
    default = QtWidgets.QMessageBox.Yes if default_yes else QtWidgets.QMessageBox.No
    return QtWidgets.QMessageBox.question(parent, title, message, buttons, default) == QtWidgets.QMessageBox.Yes


def ask_save_discard_cancel(parent, title: str, message: str) -> str:
    """'save', 'discard' or 'cancel'."""
    box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Warning, title, message,
                                QtWidgets.QMessageBox.Save | QtWidgets.QMessageBox.Discard
                                | QtWidgets.QMessageBox.Cancel, parent)
    box.setDefaultButton(QtWidgets.QMessageBox.Save)
    r = box.exec_()
    return {QtWidgets.QMessageBox.Save: "save", QtWidgets.QMessageBox.Discard: "discard"}.get(r, "cancel")


def get_open_path(parent, title: str, filters: str, directory: str = "") -> str:
    path, _ = QtWidgets.QFileDialog.getOpenFileName(parent, title, directory, filters)
    return path


def get_save_path(parent, title: str, filters: str, directory: str = "") -> str:
    path, _ = QtWidgets.QFileDialog.getSaveFileName(parent, title, directory, filters)
    return path


def get_directory(parent, title: str, directory: str = "") -> str:
    return QtWidgets.QFileDialog.getExistingDirectory(parent, title, directory)


def ask_choice(parent, title: str, message: str, choices: list[tuple[str, str]], default: str) -> str:
    """One of several named answers: choices are (key, button text); returns the key chosen
    ('cancel' when the box is closed; include a 'cancel' choice to offer it as a button)."""
    box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Question, title, message, QtWidgets.QMessageBox.NoButton, parent)
    buttons = {}
    for key, text in choices:
        role = QtWidgets.QMessageBox.RejectRole if key == "cancel" else QtWidgets.QMessageBox.AcceptRole
        buttons[box.addButton(text, role)] = key
    for b, key in buttons.items():
        if key == default:
            box.setDefaultButton(b)
    box.exec_()
    return buttons.get(box.clickedButton(), "cancel")


def get_number(parent, title: str, label: str, value: float, lo: float, hi: float, decimals: int = 0):
    """A number from the user, or None when cancelled."""
    if decimals == 0:
        v, ok = QtWidgets.QInputDialog.getInt(parent, title, label, int(value), int(lo), int(hi))
    else:
        v, ok = QtWidgets.QInputDialog.getDouble(parent, title, label, float(value), float(lo), float(hi), decimals)
    return v if ok else None


def get_smoothing(parent, mm: float):
    """(mm, smooth the brain's outline too) from the user, or None when cancelled."""
    dlg = QtWidgets.QDialog(parent)
    dlg.setWindowTitle("Smooth labels")
    dlg.setObjectName("smooth_dialog")
    lay = QtWidgets.QFormLayout(dlg)
    text = QtWidgets.QLabel("Smooth the boundaries between the tissue classes by (mm). Thin structures (sulcal "
                            "CSF) shrink: on the demo 1 mm removes a fifth of the CSF, 0.5 mm almost nothing. "
                            "The brain's outline stays where it is unless you tick the box.")
    text.setWordWrap(True)
    lay.addRow(text)
    spin = QtWidgets.QDoubleSpinBox()
    spin.setObjectName("smooth_mm")
    spin.setRange(0.1, 20.0)
    spin.setDecimals(1)
    spin.setSingleStep(0.5)
    spin.setValue(float(mm))
    lay.addRow("Smoothing (mm)", spin)
    outline = QtWidgets.QCheckBox("Smooth the brain's outline too (background may eat into the brain, and air "
                                  "next to it may become tissue)")
    outline.setObjectName("smooth_outline")
    lay.addRow(outline)
    bb = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.Ok | QtWidgets.QDialogButtonBox.Cancel)
    bb.accepted.connect(dlg.accept)
    bb.rejected.connect(dlg.reject)
    lay.addRow(bb)
    if dlg.exec_() != QtWidgets.QDialog.Accepted:
        return None
    return float(spin.value()), outline.isChecked()
