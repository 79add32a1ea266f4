"""The Labels menu: fill between slices (with a preview), remove small islands, keep the largest
piece, smoothing. The operations are engine functions (engine/labels/ops.py); this module asks for
their parameters and installs the result through the label map's one write path, as one undo step.

Fill between slices previews its result in the views before it is kept: while the preview is
shown, editing is locked (the views still scroll and zoom), Apply keeps it as one undo step and
Cancel takes it back without leaving a redo step behind.
"""
from __future__ import annotations

import logging

from PyQt5 import QtCore, QtWidgets

from engine.labels import ops
from engine.labels.labelmap import INTERPOLATED, STROKE

from .. import dialogs

log = logging.getLogger(__name__)

PLANES = ("axial", "coronal", "sagittal")


def _busy(fn):
    QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.WaitCursor)
    try:
        return fn()
    finally:
        QtWidgets.QApplication.restoreOverrideCursor()


def plane_combo(window, name: str) -> QtWidgets.QComboBox:
    """The three planes, the view under the mouse chosen (`window`: anything with `active_view`)."""
    combo = QtWidgets.QComboBox()
    combo.setObjectName(name)
    for p in PLANES:
        combo.addItem(p.capitalize(), p)
    active = getattr(window.active_view, "view", "axial")
    combo.setCurrentIndex(PLANES.index(active) if active in PLANES else 0)
    return combo


class FillBetweenDialog(QtWidgets.QDialog):
    """Plane, range and which slices count as drawn; Preview, Apply, Cancel.

    On a segmented scan (issue #19) the drawn slices are the ones the user stroked in that plane
    (`LabelMap.edited_slices`, from the provenance record: a coronal stroke does not make axial
    slices drawn), and what is interpolated is what their strokes set, laid over the labels between
    (`ops.fill_between_drawn`): the network's labels outside it stay. On a map drawn from scratch,
    "Slices that hold labels" interpolates whole slices, as ITK-SNAP and Slicer do."""

    def __init__(self, host, parent=None):
        super().__init__(parent or host.widget)
        self.win = host  # the editing interface (tools/editing.py EditHost), not the window
        self.setWindowTitle("Fill between slices")
        self.setObjectName("fill_between_dialog")
        self.setMinimumWidth(520)  # the preview's count and range must not be cut off
        self.preview_atom = None
        lay = QtWidgets.QFormLayout(self)
        self.plane = plane_combo(host, "fb_plane")
        lay.addRow("Plane", self.plane)
        self.source = QtWidgets.QComboBox()
        self.source.setObjectName("fb_source")
        self.source.addItem("Slices I drew (interpolate my strokes)", "corrected")
        self.source.addItem("Slices that hold labels (interpolate whole slices)", "labelled")
        lm = host.labelmap
        if lm is not None and lm.opened_empty and lm.predicted is None and not lm.has_manual_edits:
            self.source.setCurrentIndex(1)
        lay.addRow("Drawn slices", self.source)
        self.first = QtWidgets.QSpinBox()
        self.first.setObjectName("fb_first")
        self.last = QtWidgets.QSpinBox()
        self.last.setObjectName("fb_last")
        lay.addRow("From slice", self.first)
        lay.addRow("To slice", self.last)
        self.info = QtWidgets.QLabel("")
        self.info.setObjectName("fb_info")
        self.info.setWordWrap(True)
        lay.addRow(self.info)
        bb = QtWidgets.QDialogButtonBox()
        self.preview_button = bb.addButton("Preview", QtWidgets.QDialogButtonBox.ActionRole)
        self.apply_button = bb.addButton("Apply", QtWidgets.QDialogButtonBox.AcceptRole)
        self.cancel_button = bb.addButton(QtWidgets.QDialogButtonBox.Cancel)
        self.preview_button.clicked.connect(self.preview)
        self.apply_button.clicked.connect(self.apply)
        self.cancel_button.clicked.connect(self.reject)
        lay.addRow(bb)
        self.plane.currentIndexChanged.connect(self._defaults)
        self.source.currentIndexChanged.connect(self._defaults)
        self._defaults()
        for sb in (self.first, self.last):  # a changed range makes a shown preview out of date
            sb.valueChanged.connect(self._range_edited)
        self._preview_lm = None
        self._was_clean = False

    def _range_edited(self, *_):
        self._take_back()
        self._describe()

    # slices are shown 1-based, as in the view titles
    def axis(self) -> int:
        return self.win.view_axis(self.plane.currentData())

    def strokes_only(self) -> bool:
        return self.source.currentData() == "corrected"

    def keys(self) -> list[int]:
        lm = self.win.labelmap
        ax = self.axis()
        if self.strokes_only():
            drawn = lm.edited_slices(ax)
        else:
            drawn = ops.key_slices(lm.labels, ax, 0, lm.shape[ax] - 1)
        lo, hi = self.first.value() - 1, self.last.value() - 1
        return [k for k in drawn if lo <= k <= hi]

    def _set_range_quietly(self, first: int, last: int) -> None:
        for sb, v in ((self.first, first), (self.last, last)):
            sb.blockSignals(True)
            sb.setValue(v)
            sb.blockSignals(False)

    def _defaults(self, *_):
        self._take_back()
        lm = self.win.labelmap
        if lm is None:  # the scan was closed under the dialog
            return
        ax = self.axis()
        n = lm.shape[ax]
        for sb in (self.first, self.last):
            sb.blockSignals(True)
            sb.setRange(1, n)
            sb.blockSignals(False)
        self._set_range_quietly(1, n)
        keys = self.keys()
        if len(keys) >= 2:
            self._set_range_quietly(keys[0] + 1, keys[-1] + 1)
        self._describe()

    def _set_info(self, text: str) -> None:
        self.info.setText(text)
        self.adjustSize()  # grow with the text instead of cutting it off

    def _describe(self):
        if self.win.labelmap is None:
            return [], 0
        keys = self.keys()
        gaps = sum(b - a - 1 for a, b in zip(keys[:-1], keys[1:]))
        plane = self.plane.currentData()
        if len(keys) < 2:
            sl = "slice" if len(keys) == 1 else "slices"
            what = f"{plane} {sl} you drew on" if self.strokes_only() else f"{plane} {sl} holding labels"
            self._set_info(f"{len(keys)} {what} in this range: draw on at least two, with slices between them, "
                           "to interpolate.")
        elif gaps == 0:
            self._set_info(f"{len(keys)} drawn slices and no other slice between them: nothing to fill.")
        else:
            shown = ", ".join(str(k + 1) for k in keys[:10]) + ("..." if len(keys) > 10 else "")
            what = ("what you drew on them is interpolated over the labels between; the rest of those slices "
                    "keeps its labels" if self.strokes_only() else "the slices between are replaced")
            self._set_info(f"Drawn {plane} slices: {shown}. {gaps} slice{'s' if gaps != 1 else ''} between "
                           f"them ({keys[0] + 2}-{keys[-1]}): {what}. The drawn slices are not changed.")
        return keys, gaps

    def _compute(self):
        keys, gaps = self._describe()
        if len(keys) < 2 or gaps == 0:
            return None
        lm = self.win.labelmap
        ax = self.axis()
        try:
            if self.strokes_only():
                drawn = lm.origin == STROKE[ax]
                return _busy(lambda: ops.fill_between_drawn(lm.labels, drawn, ax, keys))
            return _busy(lambda: ops.fill_between(lm.labels, ax, keys[0], keys[-1], keys))
        except ops.OpError as exc:
            self._set_info(str(exc))
            return None

    def preview(self) -> bool:
        """Show the result in the views (editing locked until Apply or Cancel). A preview is never
        autosaved: the recovery file keeps the labels without it (LabelMap.committed)."""
        self._take_back()
        new = self._compute()
        if new is None:
            return False
        self._preview_lm = self.win.labelmap
        self._was_clean = self._preview_lm.is_clean
        self.preview_atom = self.win.labelmap.show_preview(new, "fill between")
        self.win.set_preview(self.preview_atom is not None)
        if self.preview_atom is not None:
            keys = self.keys()
            self._set_info(self.info.text() + f"\nPreview: {self.preview_atom.voxels:,} voxels change on "
                           f"{self.plane.currentData()} slices {keys[0] + 2}-{keys[-1]}. Apply keeps it (one undo "
                           "step); Cancel takes it back.")
        else:
            self._set_info(self.info.text() + "\nNothing would change.")
        return self.preview_atom is not None

    def apply(self) -> None:
        if self.preview_atom is None and not self.preview():
            return
        self.preview_atom = None
        atom = self._preview_lm.apply_preview(INTERPOLATED)
        self.win.set_preview(False)
        n = atom.voxels if atom is not None else 0
        self.win.show_message(f"Filled between slices: {n:,} voxel{'s' if n != 1 else ''} changed "
                                         "(Ctrl+Z undoes)", 8000)
        self.accept()

    def _take_back(self) -> None:
        if self.preview_atom is not None:
            lm = self._preview_lm
            if lm is not None and lm.preview is self.preview_atom:
                lm.cancel_preview()
                if self._was_clean:  # cancelling a preview leaves a saved document saved
                    lm.mark_clean()
            self.preview_atom = None
            self.win.set_preview(False)

    def reject(self) -> None:
        self._take_back()
        super().reject()


def run_operation(host, kind: str) -> None:
    """Islands, keep-largest or smoothing on the open label map, asking for its parameter. Their
    voxels are clean-ups, not corrections: a new prediction replaces them (and says so)."""
    lm, scan = host.labelmap, host.scan
    if lm is None or scan is None:
        return
    if kind == "islands":
        n = dialogs.get_number(host.widget, "Remove small islands",
                               "Pieces smaller than this many voxels take the label around them. This may change "
                               "the brain's outline (specks of tissue in the background go, holes close):",
                               host.prefs.islands, 1, 10**7, decimals=0)
        if n is None:
            return
        n = int(n)
        host.prefs.islands = n
        label, fn = f"removed islands < {n} voxels", lambda: ops.remove_islands(lm.labels, n)
    elif kind == "largest":
        if not dialogs.ask_yes_no(host.widget, "Keep the largest piece",
                               "Everything outside the largest connected piece of the brain becomes background: "
                               "this changes the brain's outline. Go on?", default_yes=True):
            return
        label, fn = "kept the largest piece", lambda: ops.keep_largest(lm.labels)
    elif kind == "smooth":
        answer = dialogs.get_smoothing(host.widget, host.prefs.smooth_mm)
        if answer is None:
            return
        mm, outline = answer
        host.prefs.smooth_mm = mm
        label = f"smoothed {mm:g} mm{' (outline too)' if outline else ''}"
        fn = lambda: ops.smooth(lm.labels, mm, scan.voxel_size, keep_outline=not outline)  # noqa: E731
    else:
        raise ValueError(kind)
    try:
        new = _busy(fn)
    except ops.OpError as exc:
        dialogs.show_error(host.widget, "Cannot do that", str(exc))
        return
    change = ops.describe_change(ops.volume_change(lm.labels, new), short=True)
    atom = lm.apply_volume(new, kind, user=False)  # a clean-up, not corrections to learn from
    if atom is None:
        host.show_message(f"Nothing to change ({label.split(' ', 1)[1]})", 5000)
    else:
        n = atom.voxels
        # short enough for the status bar beside the edit count and autosave (issue #19: cut off)
        host.show_message(f"{label.capitalize()}: {n:,} voxel{'s' if n != 1 else ''}; {change}", 15000)
    host.refresh()


class PngExportDialog(QtWidgets.QDialog):
    """File > Export images: colour PNGs of the labels as the views show them (any plane, over the
    scan or not, each slice or one montage), or the class values 0-3 for training data."""

    def __init__(self, window, parent=None):
        super().__init__(parent or window)
        self.win = window
        self.setWindowTitle("Export images (PNG)")
        self.setObjectName("png_export_dialog")
        lay = QtWidgets.QFormLayout(self)
        self.plane = plane_combo(window, "png_plane")
        lay.addRow("Plane", self.plane)
        self.over_scan = QtWidgets.QCheckBox("Labels over the scan")
        self.over_scan.setObjectName("png_over_scan")
        self.over_scan.setChecked(True)
        lay.addRow(self.over_scan)
        self.montage = QtWidgets.QCheckBox("One montage image (24 slices that hold labels)")
        self.montage.setObjectName("png_montage")
        lay.addRow(self.montage)
        self.values = QtWidgets.QCheckBox("Class values 0-3 instead, one grey PNG per axial slice (training data)")
        self.values.setObjectName("png_values")
        self.values.toggled.connect(lambda on: [w.setEnabled(not on) for w in (self.plane, self.over_scan,
                                                                                  self.montage)])
        lay.addRow(self.values)
        bb = QtWidgets.QDialogButtonBox()
        self.export_button = bb.addButton("Export to folder...", QtWidgets.QDialogButtonBox.AcceptRole)
        self.export_button.setObjectName("png_export")
        bb.addButton(QtWidgets.QDialogButtonBox.Cancel).clicked.connect(self.reject)
        self.export_button.clicked.connect(self.export)
        lay.addRow(bb)
        self.files: list = []

    def export(self) -> None:
        from engine.io.export import export_png, export_png_slices

        win = self.win
        d = dialogs.get_directory(self, "Export PNG images to")
        if not d or win.labelmap is None:
            return
        lm, scan = win.labelmap, win.scan
        try:
            if self.values.isChecked():
                self.files = _busy(lambda: export_png_slices(lm.labels, d, axis=win.axial_axis))
            else:
                plane = self.plane.currentData()
                self.files = _busy(lambda: export_png(
                    lm.labels, scan.affine, d, plane=plane, scan=scan.data if self.over_scan.isChecked() else None,
                    montage=self.montage.isChecked(), opacity=win.tool_panel.overlay_style()[0] or 0.5,
                    window=win.view_area.levels()))  # the window/level on screen
        except (OSError, ValueError) as exc:
            dialogs.show_error(self, "Export failed", f"{d}: {exc}")
            return
        what = self.files[0].name if len(self.files) == 1 else f"{len(self.files)} PNG images"
        win.statusBar().showMessage(f"Wrote {what} to {d}", 10000)
        self.accept()
