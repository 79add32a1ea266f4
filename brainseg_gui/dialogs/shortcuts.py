"""Help > Keyboard shortcuts: every shortcut, generated from the action table, and the mouse."""
from __future__ import annotations

from PyQt5 import QtWidgets

from ..tools.actions import ACTIONS, MOUSE_HELP


class ShortcutsDialog(QtWidgets.QDialog):
    """Every shortcut, generated from the action table, plus the mouse bindings."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts and mouse")
        self.resize(760, 640)
        table = QtWidgets.QTableWidget(0, 3)
        table.setObjectName("shortcuts_table")
        table.setHorizontalHeaderLabels(["Keys", "Action", "Menu"])
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        rows = [(" or ".join(s.shortcuts), s.text.replace("&", ""), s.menu) for s in ACTIONS if s.shortcuts]
        rows += [(k, v, "Mouse") for k, v in MOUSE_HELP]
        for keys, text, menu in rows:
            r = table.rowCount()
            table.insertRow(r)
            for c, val in enumerate((keys, text, menu)):
                table.setItem(r, c, QtWidgets.QTableWidgetItem(val))
        table.setWordWrap(True)
        hh = table.horizontalHeader()
        hh.setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeToContents)
        hh.setSectionResizeMode(1, QtWidgets.QHeaderView.Stretch)  # the action's name is never cut off
        hh.setSectionResizeMode(2, QtWidgets.QHeaderView.ResizeToContents)
        table.resizeRowsToContents()
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(table)
        bb = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.Close)
        bb.rejected.connect(self.reject)
        lay.addWidget(bb)
        self.table = table
