"""View > Reorient scan...: ITK-SNAP's "Reorient image" for a scan whose header has its axes wrong.

The dialog shows the axis codes the open scan has now and where they came from (its header, an
assumption, or the anatomy: engine/io/anatomy.py), lets the user choose where each array axis
points (or take the anatomy's answer), previews the three middle slices as the views would show
them with that choice, and saves a corrected copy: the same voxels with the new affine, as NIfTI.
The scan's own files are never written; only the header's directions change, never the voxels.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from PyQt5 import QtCore, QtGui, QtWidgets

from engine.core.atomic import atomic_write
from engine.io.anatomy import find_orientation, reoriented_affine
from engine.io.export import grey_window
from engine.io.orientation import VIEWS, ViewGeometry
from engine.io.volume import Volume, files_of, scan_stem

from .. import dialogs

log = logging.getLogger(__name__)

DIRECTIONS = (("R", "right"), ("L", "left"), ("A", "anterior"), ("P", "posterior"), ("S", "superior"),
              ("I", "inferior"))
_NAME = dict(DIRECTIONS)
THUMB_PX = 170
LETTER_COLOUR = "#ffd24d"  # the views' orientation letters


def default_copy_path(vol: Volume) -> Path:
    """`<stem>_reoriented.nii.gz` beside the scan (a DICOM series: beside its folder, never inside it)."""
    p = vol.path
    if vol.source == "dicom":
        series = f"_s{vol.series_number}" if vol.series_number else ""
        return p.parent.with_name(f"{p.parent.name}{series}_reoriented.nii.gz")
    return p.with_name(f"{scan_stem(p)}_reoriented.nii.gz")


def nifti_name(path: str | os.PathLike) -> Path:
    """The path with `.nii.gz` added unless it already names a NIfTI file."""
    p = Path(path)
    return p if p.name.lower().endswith((".nii", ".nii.gz")) else p.with_name(p.name + ".nii.gz")


def stored_array(vol: Volume) -> np.ndarray:
    """The scan's voxels in the type the file held them (int16 for OASIS) when that keeps every
    value exactly; float32 (as the app holds them) otherwise, e.g. after a scale factor."""
    try:
        dtype = np.dtype(vol.source_dtype).newbyteorder("=")
    except TypeError:
        dtype = None
    if dtype is not None and dtype.kind in "iu" and dtype.itemsize <= 4:
        info = np.iinfo(dtype)
        if vol.data.min() >= info.min and vol.data.max() <= info.max:
            cast = vol.data.astype(dtype)
            if np.array_equal(cast, vol.data):
                return cast
    return np.asarray(vol.data, dtype=np.float32)


def write_reoriented(path: str | os.PathLike, vol: Volume, affine: np.ndarray) -> Path:
    """Write the scan's voxels with `affine` (the scan's own sform/qform code, else 1) as NIfTI,
    atomically. Returns the path written."""
    path = nifti_name(path)
    img = nib.Nifti1Image(stored_array(vol), np.asarray(affine, float))
    img.header.set_xyzt_units("mm")
    from engine.io.space import mask_xform_code

    code = mask_xform_code(vol)  # the scan's own space (MNI, Talairach) survives the correction
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    ext = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"

    def write(tmp: Path) -> None:
        named = tmp.with_name(tmp.name + ext)  # nibabel picks the format (and gzip) from the name
        nib.save(img, str(named))
        os.replace(named, tmp)

    atomic_write(path, write)
    log.info("wrote %s: %s axes (was %s), same voxels", path, "".join(nib.aff2axcodes(affine)), vol.orientation)
    return path


def grey_image(img: np.ndarray, levels: tuple[float, float]) -> np.ndarray:
    lo, hi = levels
    return (np.clip((np.asarray(img, np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def thumbnail(img8: np.ndarray, geometry: ViewGeometry, size: int = THUMB_PX) -> QtGui.QPixmap:
    """A grey slice at its true aspect, fitted into `size` pixels, with the orientation letters."""
    rows, cols = img8.shape
    w_mm, h_mm = cols * geometry.col_spacing, rows * geometry.row_spacing
    scale = size / max(w_mm, h_mm)
    w, h = max(1, int(round(w_mm * scale))), max(1, int(round(h_mm * scale)))
    data = np.ascontiguousarray(img8)
    qimg = QtGui.QImage(data.data, cols, rows, cols, QtGui.QImage.Format_Grayscale8).copy()
    pix = QtGui.QPixmap.fromImage(qimg.scaled(w, h, QtCore.Qt.IgnoreAspectRatio, QtCore.Qt.SmoothTransformation))
    painter = QtGui.QPainter(pix)
    painter.setPen(QtGui.QColor(LETTER_COLOUR))
    font = painter.font()
    font.setBold(True)
    painter.setFont(font)
    rect = QtCore.QRect(2, 1, w - 4, h - 2)
    for edge, align in (("left", QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter),
                        ("right", QtCore.Qt.AlignRight | QtCore.Qt.AlignVCenter),
                        ("top", QtCore.Qt.AlignTop | QtCore.Qt.AlignHCenter),
                        ("bottom", QtCore.Qt.AlignBottom | QtCore.Qt.AlignHCenter)):
        painter.drawText(rect, int(align), geometry.edges[edge])
    painter.end()
    return pix


def _describe_codes(codes: str) -> str:
    return ", ".join(f"{ax} towards {_NAME[c]}" for ax, c in zip("ijk", codes))


class ReorientDialog(QtWidgets.QDialog):
    """One per main window (not modal: the views stay usable); follows the scan the window opens.
    It takes the file side of the window (brainseg_gui/files.py FileController: the open scan,
    opening a scan, a status message, the scanOpened signal), not the window itself."""

    def __init__(self, host):
        super().__init__(host.widget)
        self.win = host
        self.setObjectName("reorient_dialog")
        self.setWindowTitle("Reorient scan")
        self.scan: Volume | None = None
        self.levels = (0.0, 1.0)
        self.finding = None
        self.preview_images: dict[str, np.ndarray] = {}  # what each thumbnail shows (uint8, display order)
        self.preview_edges: dict[str, dict] = {}

        self.current_label = QtWidgets.QLabel("")
        self.current_label.setObjectName("reorient_current")
        self.source_label = QtWidgets.QLabel("")
        self.source_label.setObjectName("reorient_source")
        self.source_label.setWordWrap(True)

        grid = QtWidgets.QGridLayout()
        self.combos: list[QtWidgets.QComboBox] = []
        self.axis_labels: list[QtWidgets.QLabel] = []
        for n, ax in enumerate("ijk"):
            combo = QtWidgets.QComboBox()
            combo.setObjectName(f"reorient_{ax}")
            for letter, name in DIRECTIONS:
                combo.addItem(f"{letter}  ({name})", letter)
            combo.currentIndexChanged.connect(self._update)
            label = QtWidgets.QLabel("")
            grid.addWidget(label, n, 0)
            grid.addWidget(combo, n, 1)
            self.combos.append(combo)
            self.axis_labels.append(label)
        self.anatomy_button = QtWidgets.QPushButton("Use the anatomy's")
        self.anatomy_button.setObjectName("reorient_anatomy")
        self.anatomy_button.setToolTip("Find the orientation from the anatomy (the 24 turns of the axes scored "
                                       "against a template head); left and right are kept as stored")
        self.anatomy_button.clicked.connect(self.use_anatomy)
        self.revert_button = QtWidgets.QPushButton("As stored")
        self.revert_button.setObjectName("reorient_revert")
        self.revert_button.setToolTip("Back to the axes the scan has now")
        self.revert_button.clicked.connect(lambda: self.set_codes(self.scan.orientation if self.scan else "LAS"))
        grid.addWidget(self.anatomy_button, 0, 2)
        grid.addWidget(self.revert_button, 1, 2)
        self.anatomy_label = QtWidgets.QLabel("")
        self.anatomy_label.setObjectName("reorient_anatomy_note")
        self.anatomy_label.setWordWrap(True)

        thumbs = QtWidgets.QHBoxLayout()
        self.thumbs: dict[str, QtWidgets.QLabel] = {}
        for view in VIEWS:
            box = QtWidgets.QVBoxLayout()
            title = QtWidgets.QLabel(view.capitalize())
            title.setAlignment(QtCore.Qt.AlignHCenter)
            thumb = QtWidgets.QLabel()
            thumb.setObjectName(f"reorient_preview_{view}")
            thumb.setFixedSize(THUMB_PX + 4, THUMB_PX + 4)
            thumb.setAlignment(QtCore.Qt.AlignCenter)
            thumb.setStyleSheet("background: black; color: #bbb;")
            box.addWidget(title)
            box.addWidget(thumb)
            thumbs.addLayout(box)
            self.thumbs[view] = thumb

        self.result_label = QtWidgets.QLabel("")
        self.result_label.setObjectName("reorient_result")
        self.result_label.setWordWrap(True)
        self.problem_label = QtWidgets.QLabel("")
        self.problem_label.setObjectName("reorient_problem")
        self.problem_label.setWordWrap(True)
        self.problem_label.setStyleSheet("color: #c0392b;")
        self.saved_label = QtWidgets.QLabel("")
        self.saved_label.setObjectName("reorient_saved")
        self.saved_label.setWordWrap(True)

        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.Close)
        self.save_button = buttons.addButton("Save corrected copy...", QtWidgets.QDialogButtonBox.ActionRole)
        self.save_button.setObjectName("reorient_save")
        self.save_button.clicked.connect(self.on_save)
        buttons.rejected.connect(self.reject)

        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(self.current_label)
        lay.addWidget(self.source_label)
        lay.addWidget(QtWidgets.QLabel("Where each array axis points (the direction its index increases towards):"))
        lay.addLayout(grid)
        lay.addWidget(self.anatomy_label)
        lay.addWidget(QtWidgets.QLabel("Preview: the middle slices as the views would show them"))
        lay.addLayout(thumbs)
        lay.addWidget(self.result_label)
        lay.addWidget(self.problem_label)
        lay.addWidget(self.saved_label)
        note = QtWidgets.QLabel("Only the header's directions change, never the voxels; the scan's own file is "
                                "never written. Masks of this scan fit the copy voxel for voxel; one saved "
                                "before keeps the old header (opening it on the copy warns that they differ).")
        note.setWordWrap(True)
        note.setStyleSheet("color: grey;")
        lay.addWidget(note)
        lay.addWidget(buttons)
        host.scanOpened.connect(lambda _p: self.set_scan(self.win.scan))
        self.set_scan(host.scan)

    # ------------------------------------------------------------------ state
    def set_scan(self, vol: Volume | None) -> None:
        """Show `vol` (the window's scan) as it is now."""
        self.scan = vol
        self.finding = None
        self.anatomy_label.setText("")
        self.saved_label.setText("")
        if vol is None:
            self.current_label.setText("No scan open")
            self.source_label.setText("")
            self._update()
            return
        self.levels = grey_window(vol.data)
        codes = vol.orientation
        self.setWindowTitle(f"Reorient scan - {vol.name}")
        self.current_label.setText(f"<b>{vol.name}</b>: axes now <b>{codes}</b> ({_describe_codes(codes)})")
        self.source_label.setText(self._source_text(vol))
        for n, ax in enumerate("ijk"):
            self.axis_labels[n].setText(f"Axis {ax} ({vol.shape[n]} voxels of {vol.voxel_size[n]:g} mm):")
        self.set_codes(codes)

    @staticmethod
    def _source_text(vol: Volume) -> str:
        if vol.orientation_source == "anatomy":
            note, prefix = vol.geometry_note or "", "orientation found from the anatomy: "
            text = "Found from the anatomy: " + (note[len(prefix):] if note.startswith(prefix) else note)
        elif vol.orientation_source == "assumed":
            text = f"Assumed, not stored: {vol.geometry_note}" if vol.geometry_note else "Assumed, not stored"
        elif vol.source == "dicom":
            text = "From the DICOM headers (image position and orientation)"
        else:
            text = "From the file's header (its affine)"
            if vol.geometry_note:
                text += f": {vol.geometry_note}"
        for w in vol.warnings:
            text += f"\nWarning: {w}"
        return text

    def chosen_codes(self) -> str:
        return "".join(c.currentData() for c in self.combos)

    def set_codes(self, codes: str) -> None:
        for combo, letter in zip(self.combos, codes):
            combo.blockSignals(True)
            combo.setCurrentIndex(combo.findData(letter))
            combo.blockSignals(False)
        self._update()

    def new_affine(self) -> np.ndarray:
        """The affine the chosen codes give the scan (ValueError when they are not valid)."""
        return reoriented_affine(self.scan.affine, self.scan.shape, self.chosen_codes())

    def _update(self, *_) -> None:
        vol = self.scan
        problem = ""
        affine = None
        if vol is not None:
            try:
                affine = self.new_affine()
            except ValueError as exc:
                problem = str(exc)
        self.problem_label.setText(f"Cannot save these axes: {problem}" if problem else "")
        self.problem_label.setVisible(bool(problem))
        self.save_button.setEnabled(affine is not None)
        self.save_button.setToolTip(problem or "Save the scan's voxels with these axes as a new NIfTI file")
        for w in (*self.combos, self.anatomy_button, self.revert_button):
            w.setEnabled(vol is not None)
        self._preview(affine)
        if affine is None:
            self.result_label.setText("")
            self._fit()
            return
        codes = self.chosen_codes()
        if codes == vol.orientation:
            text = "These are the axes the scan has now."
            if vol.orientation_source != "header":
                text += " A copy records them in its header (NIfTI), so no tool has to assume them again."
        else:
            text = f"New axes: {codes} ({_describe_codes(codes)}); centre and voxel sizes kept."
            if np.linalg.det(affine[:3, :3]) * np.linalg.det(vol.affine[:3, :3]) < 0:
                text += (" <b>This mirrors the scan: left and right swap.</b> Only choose it if you know the "
                         "stored left-right is wrong (a brain is too symmetric for the anatomy to tell).")
        self.result_label.setText(text)
        self._fit()

    def _fit(self) -> None:
        """Tall enough for the wrapped notes at this width (Qt sizes a top-level window by its
        labels' one-line heights, which would squeeze the thumbnails under the text)."""
        width = max(self.width(), self.layout().minimumSize().width())  # (100 before the first show)
        self.setMinimumHeight(self.layout().totalHeightForWidth(width))

    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        if ev.size().width() != ev.oldSize().width():
            self._fit()

    def _preview(self, affine: np.ndarray | None) -> None:
        self.preview_images, self.preview_edges = {}, {}
        for view, thumb in self.thumbs.items():
            if affine is None:
                thumb.clear()
                thumb.setText("(no preview)" if self.scan is not None else "")
                continue
            g = ViewGeometry.for_view(view, affine, self.scan.shape)
            img8 = grey_image(g.display(self.scan.data, g.n_slices // 2), self.levels)
            self.preview_images[view] = img8
            self.preview_edges[view] = dict(g.edges)
            thumb.setPixmap(thumbnail(img8, g))

    # ------------------------------------------------------------------ actions
    def use_anatomy(self) -> None:
        """Fill the choices with the orientation the anatomy gives (find_orientation)."""
        vol = self.scan
        if vol is None:
            return
        QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.WaitCursor)
        try:
            f = find_orientation(vol.data, vol.affine)
        except Exception as exc:  # a suggestion, never a reason to fail
            log.warning("orientation from the anatomy failed: %s", exc)
            self.anatomy_label.setText(f"The anatomy could not be read ({exc}); nothing was changed.")
            return
        finally:
            QtWidgets.QApplication.restoreOverrideCursor()
        self.finding = f
        kind = "a head with its skull" if f.template == "head" else "a skull-stripped brain"
        if f.changed:
            self.set_codes(f.after)
            text = (f"The anatomy ({kind}) says <b>{f.after}</b>: match {f.score:.2f}, against {f.assumed_score:.2f} "
                    f"for {f.before} as it is now. Left and right are kept as stored (a brain is too symmetric "
                    "to tell).")
        elif f.confident:
            self.set_codes(f.before)
            text = f"The anatomy ({kind}) agrees with {f.before} (match {f.score:.2f})."
        else:
            text = (f"The anatomy could not tell (best guess {f.after}, match {f.score:.2f}, too weak to be "
                    "believed); the choices were left as they were.")
        self.anatomy_label.setText(text)
        self._fit()

    def on_save(self) -> None:
        if self.scan is None or not self.save_button.isEnabled():
            return
        path = dialogs.get_save_path(self, "Save corrected copy", "NIfTI (*.nii.gz *.nii)",
                                     str(default_copy_path(self.scan)))
        if path:
            self.save_copy(path)

    def save_copy(self, path: str | os.PathLike, offer_open: bool = True) -> Path | None:
        """Write the corrected copy to `path` (never over the scan's own files); then offer to open it."""
        vol = self.scan
        try:
            affine = self.new_affine()
        except ValueError as exc:
            dialogs.show_error(self, "Cannot save", str(exc))
            return None
        path = nifti_name(path)
        own = vol.path is not None and bool(files_of(path) & files_of(vol.path))
        if vol.source == "dicom" and vol.path is not None and path.resolve().parent == vol.path.resolve().parent:
            own = True  # inside the series' folder: keep it as the scanner wrote it
        if own:
            dialogs.show_error(self, "Not over the scan",
                               f"{path} is the scan's own file{' folder' if vol.source == 'dicom' else ''}: the "
                               "Reorient tool never changes the original. Choose another name.")
            return None
        try:
            written = write_reoriented(path, vol, affine)
        except OSError as exc:
            dialogs.show_error(self, "Save failed", f"{path}: could not be written ({exc})")
            return None
        codes = "".join(nib.aff2axcodes(affine))
        self.win.show_message(f"Saved a reoriented copy: {written} ({codes})", 10000)
        if offer_open and dialogs.ask_yes_no(self, "Open the copy?",
                                             f"Saved {written} with axes {codes}.\n\nOpen it now in place of "
                                             f"{vol.name}?", default_yes=True):
            self.win.open_scan(written)  # the dialog follows (scanOpened)
        self.saved_label.setText(f"Saved {written} ({codes})")
        self._fit()
        return written
