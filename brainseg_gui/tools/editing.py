"""The editing side of the window: tools and classes, brush size and overlay, undo and redo, and
the label operations (fill between slices with its preview, islands, largest piece, smoothing).
Split from the window (issue #19)."""
from __future__ import annotations

from dataclasses import dataclass

from PyQt5 import QtCore, QtWidgets  # noqa: F401

from engine.core.classes import tissue_classes


@dataclass
class OperationPrefs:
    islands: int = 50  # remove islands smaller than this many voxels
    smooth_mm: float = 1.0


class EditController(QtCore.QObject):
    """Also the narrow interface the label-operation dialogs get instead of the window (issue #19):
    the label map and scan, the plane of a view, preview locking, a status message, refresh."""

    def __init__(self, window):
        super().__init__(window)
        self.win = window
        self.prefs = OperationPrefs()

    # ------------------------------------------------------------------ what the dialogs may use
    @property
    def widget(self) -> QtWidgets.QWidget:
        return self.win  # the parent of their windows

    @property
    def labelmap(self):
        return self.win.labelmap

    @property
    def scan(self):
        return self.win.scan

    @property
    def active_view(self):
        return self.win.active_view

    def view_axis(self, plane: str) -> int:
        return self.win.view_axis(plane)

    def show_message(self, text: str, ms: int) -> None:
        self.win.statusBar().showMessage(text, ms)

    def refresh(self) -> None:
        self.win.update_state()

    # ------------------------------------------------------------------ slots

    def _end_preview(self) -> None:
        """Take back a label operation's preview before the document changes under it."""
        dlg = getattr(self.win, "fill_dialog", None)
        if dlg is not None and dlg.isVisible():
            dlg.reject()

    def set_preview(self, on: bool) -> None:
        """While a label operation's result is previewed, editing is locked; views still scroll."""
        self.win._preview = bool(on)
        if on and self.win.tool_state.tool != "navigate":
            self._set_tool("navigate")
        self.win.session.set_preview(on)  # a prediction arriving meanwhile waits for the preview to end
        self.win.update_state()

    def on_fill_between(self) -> None:
        from .label_ops import FillBetweenDialog

        if self.win.labelmap is None:
            return
        dlg = getattr(self.win, "fill_dialog", None)
        if dlg is not None and dlg.isVisible():  # one at a time: one preview, one lock
            dlg.raise_()
            return
        self.win.fill_dialog = FillBetweenDialog(self)
        self.win.fill_dialog.show()  # not modal: the views scroll through the preview

    def on_remove_islands(self) -> None:
        from .label_ops import run_operation

        run_operation(self, "islands")

    def on_keep_largest(self) -> None:
        from .label_ops import run_operation

        run_operation(self, "largest")

    def on_smooth_labels(self) -> None:
        from .label_ops import run_operation

        run_operation(self, "smooth")

    def _on_edit_finished(self, atom) -> None:
        if atom is not None:
            self.win.statusBar().showMessage(f"{atom.kind}: {atom.voxels} voxels changed", 3000)
        self.win.session.flush_deferred()  # a prediction that arrived during the stroke lands now
        self.win.update_state()

    def _describe(self, atom) -> str:
        """What an edit was, for the undo/redo message: "erase, 59 voxels, axial slice 129"."""
        planes = {ax: p for p, ax in self.win.session.plane_axes.items()}
        where = sorted({f"{planes.get(ax, f'axis {ax}')} slice {k + 1}" for ax, k in atom.slices})
        text = f"{atom.kind}, {atom.voxels:,} voxel{'s' if atom.voxels != 1 else ''}"
        if where:
            text += ", " + (", ".join(where) if len(where) <= 2 else f"{len(where)} slices")
        return text

    def on_undo(self) -> None:
        atom = self.win.labelmap.undo() if self.win.labelmap is not None else None
        if atom is not None:
            self.win.statusBar().showMessage(f"Undone: {self._describe(atom)}", 4000)
        self.win.session.flush_deferred()  # undo during a drag ends the stroke: a waiting prediction lands
        self.win.update_state()

    def on_redo(self) -> None:
        atom = self.win.labelmap.redo() if self.win.labelmap is not None else None
        if atom is not None:
            self.win.statusBar().showMessage(f"Redone: {self._describe(atom)}", 4000)
        self.win.session.flush_deferred()
        self.win.update_state()

    def _set_tool(self, tool: str) -> None:
        self.win.tool_state.tool = tool
        self.win.actions[f"tool_{tool}"].setChecked(True)
        if tool != "navigate" and self.win.scan is not None:
            self.win._ensure_labelmap()
        cursor = QtCore.Qt.CrossCursor if tool != "navigate" else QtCore.Qt.ArrowCursor
        for v in self.win.views.values():
            v.gv.viewport().setCursor(cursor)
            v.brush_cursor.setVisible(False)
        self.win.view_area.redraw_range()
        self.win.statusBar().showMessage(f"Tool: {tool}", 2000)

    def _set_class(self, v: int) -> None:
        self.win.tool_state.value = v
        self.win.actions[f"class_{v}"].setChecked(True)
        self.win.statusBar().showMessage(f"Class {v}: {tissue_classes()[v].name}", 2000)

    def on_brush_smaller(self):
        self.win.tool_panel.size_spin.setValue(self.win.tool_panel.size_spin.value() - 1)

    def on_brush_larger(self):
        self.win.tool_panel.size_spin.setValue(self.win.tool_panel.size_spin.value() + 1)

    def on_toggle_overlay(self):
        self.win.tool_panel.show_check.setChecked(self.win.actions["toggle_overlay"].isChecked())

    def on_toggle_outline(self):
        self.win.tool_panel.outline_check.setChecked(self.win.actions["toggle_outline"].isChecked())

    def on_opacity_up(self):
        self.win.tool_panel.opacity.setValue(self.win.tool_panel.opacity.value() + 10)

    def on_opacity_down(self):
        self.win.tool_panel.opacity.setValue(self.win.tool_panel.opacity.value() - 10)
