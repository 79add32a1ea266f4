"""Tissue volumes: a table and a bar chart per class, with CSV and JSON export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtWidgets

from engine.core.classes import tissue_classes
from engine.io.stats import volume_stats, write_stats_csv, write_stats_json

from . import dialogs


class StatsDialog(QtWidgets.QDialog):
    def __init__(self, labels: np.ndarray, voxel_volume_ml: float, name: str, parent=None, default_dir: str = ""):
        super().__init__(parent)
        self.default_dir = default_dir
        self.setWindowTitle(f"Tissue volumes - {name}")
        self.resize(620, 520)
        self.stats = volume_stats(labels, voxel_volume_ml, source=name)
        classes = tissue_classes()
        table = QtWidgets.QTableWidget(0, 4)
        table.setObjectName("stats_table")
        table.setHorizontalHeaderLabels(["Class", "Voxels", "Volume (mL)", "Fraction of ICV"])
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        for tc in classes:
            row = self.stats["classes"][tc.key]
            r = table.rowCount()
            table.insertRow(r)
            frac = row["icv_fraction"]
            for c, text in enumerate((tc.name, f"{row['voxels']:,}", f"{row['volume_ml']:.2f}",
                                      "" if frac is None else f"{100 * frac:.1f} %")):
                table.setItem(r, c, QtWidgets.QTableWidgetItem(text))
        r = table.rowCount()
        table.insertRow(r)
        table.setItem(r, 0, QtWidgets.QTableWidgetItem("Intracranial (CSF+GM+WM)"))
        table.setItem(r, 2, QtWidgets.QTableWidgetItem(f"{self.stats['icv_ml']:.2f}"))
        table.resizeColumnsToContents()
        table.horizontalHeader().setStretchLastSection(True)
        self.table = table

        plot = pg.PlotWidget(background="w")
        plot.setObjectName("stats_plot")
        tissue = [tc for tc in classes if tc.value > 0]
        xs = np.arange(len(tissue))
        heights = [self.stats["classes"][tc.key]["volume_ml"] for tc in tissue]
        bars = pg.BarGraphItem(x=xs, height=heights, width=0.6, brushes=[pg.mkBrush(*tc.rgb) for tc in tissue])
        plot.addItem(bars)
        plot.getAxis("bottom").setTicks([[(i, tc.name) for i, tc in enumerate(tissue)]])
        plot.setLabel("left", "Volume (mL)")  # no SI prefix: pyqtgraph made it "kmL"
        plot.getAxis("left").enableAutoSIPrefix(False)
        plot.setMouseEnabled(False, False)
        self.plot = plot

        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.Close)
        self.csv_button = buttons.addButton("Export CSV...", QtWidgets.QDialogButtonBox.ActionRole)
        self.json_button = buttons.addButton("Export JSON...", QtWidgets.QDialogButtonBox.ActionRole)
        self.csv_button.clicked.connect(lambda: self._export("csv"))
        self.json_button.clicked.connect(lambda: self._export("json"))
        buttons.rejected.connect(self.reject)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(table)
        lay.addWidget(plot, 1)
        self.saved_label = QtWidgets.QLabel("")
        self.saved_label.setObjectName("stats_saved")
        lay.addWidget(self.saved_label)
        lay.addWidget(buttons)

    def export_to(self, path: str, fmt: str) -> None:
        (write_stats_csv if fmt == "csv" else write_stats_json)(path, self.stats)

    def _export(self, fmt: str) -> None:
        from engine.io.volume import scan_stem

        default = str(Path(self.default_dir) / f"{scan_stem(self.stats.get('file') or 'labels')}_volumes.{fmt}")
        path = dialogs.get_save_path(self, f"Export volumes as {fmt.upper()}", f"{fmt.upper()} (*.{fmt})", default)
        if not path:
            return
        if not path.lower().endswith(f".{fmt}"):
            path += f".{fmt}"
        try:
            self.export_to(path, fmt)
        except OSError as exc:
            dialogs.show_error(self, "Export failed", f"{path}: {exc}")
            return
        self.saved_label.setText(f"Saved {path}")
