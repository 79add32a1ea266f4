"""Tissue volumes: a table and a bar chart per class, with CSV and JSON export.

Volumes of an atlas-registered scan (OASIS _t88_, a Talairach/MNI NIfTI, or ticked here) are
atlas-space mL and say so; with OASIS's ASF the table adds native mL and eTIV (engine/io/space.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtWidgets

from engine.core.classes import tissue_classes
from engine.io.space import ASF_RANGE, ETIV_LABEL, MARKED_REASON, Space, atlas_space_reason
from engine.io.stats import volume_stats, write_stats_csv, write_stats_json
from engine.io.volume import Volume

from .. import dialogs


class StatsDialog(QtWidgets.QDialog):
    def __init__(self, labels: np.ndarray, voxel_volume_ml: float, name: str, parent=None, default_dir: str = "",
                 scan: Volume | None = None, atlas_space: bool = False, asf: float | None = None):
        """`scan`: the labels' scan, whose space is found from its file (and whose atlas mark the
        checkbox sets, so a saved mask keeps it); `atlas_space` / `asf` start the two fields."""
        super().__init__(parent)
        self.default_dir = default_dir
        self.labels, self.voxel_volume_ml, self.name, self.scan = labels, voxel_volume_ml, name, scan
        self.resize(620, 560)
        classes = tissue_classes()
        found = atlas_space_reason(scan) if scan is not None else None
        self.found_reason = None if found == MARKED_REASON else found  # what the file itself says
        self.atlas_check = QtWidgets.QCheckBox(
            f"Atlas space: {self.found_reason}" if self.found_reason else "Atlas-registered scan")
        self.atlas_check.setObjectName("stats_atlas")
        self.atlas_check.setToolTip("Volumes of a scan registered to an atlas are atlas-space mL: every head "
                                    "was scaled to the atlas's size")
        self.atlas_check.setChecked(bool(self.found_reason or atlas_space or (scan is not None and scan.atlas_marked)))
        self.atlas_check.setEnabled(self.found_reason is None)
        self.asf_spin = QtWidgets.QDoubleSpinBox()
        self.asf_spin.setObjectName("stats_asf")
        self.asf_spin.setRange(0.0, ASF_RANGE[1])
        self.asf_spin.setDecimals(3)
        self.asf_spin.setSingleStep(0.01)
        self.asf_spin.setSpecialValueText("none")  # 0: no ASF
        self.asf_spin.setToolTip("OASIS's atlas scaling factor (ASF column of its CSV): native mL = atlas mL / ASF, "
                                 "eTIV = 1755 / ASF")
        if asf:
            self.asf_spin.setValue(asf)
        self.space_note = QtWidgets.QLabel("")
        self.space_note.setObjectName("stats_space")
        self.space_note.setWordWrap(True)
        space_row = QtWidgets.QHBoxLayout()
        space_row.addWidget(self.atlas_check)
        space_row.addStretch(1)
        space_row.addWidget(QtWidgets.QLabel("ASF:"))
        space_row.addWidget(self.asf_spin)

        table = QtWidgets.QTableWidget(0, 4)
        table.setObjectName("stats_table")
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        table.horizontalHeader().setStretchLastSection(True)
        self.table = table
        self.stats = volume_stats(labels, voxel_volume_ml, source=name)

        plot = pg.PlotWidget(background="w")
        plot.setObjectName("stats_plot")
        tissue = [tc for tc in classes if tc.value > 0]
        xs = np.arange(len(tissue))
        heights = [self.stats["classes"][tc.key]["volume_ml"] for tc in tissue]
        bars = pg.BarGraphItem(x=xs, height=heights, width=0.6, brushes=[pg.mkBrush(*tc.rgb) for tc in tissue])
        plot.addItem(bars)
        plot.getAxis("bottom").setTicks([[(i, tc.name) for i, tc in enumerate(tissue)]])
        plot.getAxis("left").enableAutoSIPrefix(False)  # no SI prefix: pyqtgraph made it "kmL"
        plot.setMouseEnabled(False, False)
        self.plot = plot

        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.Close)
        self.csv_button = buttons.addButton("Export CSV...", QtWidgets.QDialogButtonBox.ActionRole)
        self.json_button = buttons.addButton("Export JSON...", QtWidgets.QDialogButtonBox.ActionRole)
        self.csv_button.clicked.connect(lambda: self._export("csv"))
        self.json_button.clicked.connect(lambda: self._export("json"))
        buttons.rejected.connect(self.reject)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(space_row)
        lay.addWidget(self.space_note)
        lay.addWidget(table)
        lay.addWidget(plot, 1)
        self.saved_label = QtWidgets.QLabel("")
        self.saved_label.setObjectName("stats_saved")
        lay.addWidget(self.saved_label)
        lay.addWidget(buttons)
        self.atlas_check.toggled.connect(self._space_changed)
        self.asf_spin.valueChanged.connect(self._space_changed)
        self._space_changed()

    def space(self) -> Space:
        """The space the fields say (an ASF only for atlas space; one outside OASIS's range is ignored)."""
        reason = self.found_reason or (MARKED_REASON if self.atlas_check.isChecked() else None)
        asf = self.asf_spin.value() if reason and self.asf_spin.value() > 0 else None
        try:
            return Space(reason, asf)
        except ValueError:
            return Space(reason)

    def _space_changed(self, *_) -> None:
        if self.scan is not None and self.found_reason is None:
            self.scan.atlas_marked = self.atlas_check.isChecked()  # a mask saved now says atlas space too
        atlas = self.atlas_check.isChecked()
        self.asf_spin.setEnabled(atlas)
        space = self.space()
        self.stats = volume_stats(self.labels, self.voxel_volume_ml, source=self.name, space=space)
        unit = space.unit
        self.setWindowTitle(f"Tissue volumes ({unit}) - {self.name}" if space.is_atlas else f"Tissue volumes - {self.name}")
        self.plot.setLabel("left", f"Volume ({unit})")
        if not space.is_atlas:
            note = ""
        elif space.asf is None:
            bad = self.asf_spin.value() > 0
            note = (f"Atlas-space mL: each head was scaled to the atlas's size, so these are not the brain's own "
                    f"volumes. {'That ASF is outside ' + f'{ASF_RANGE[0]:g}-{ASF_RANGE[1]:g}; ' if bad else ''}"
                    "Give OASIS's ASF for native mL and eTIV.")
        else:
            note = (f"Atlas-space mL; native mL = atlas mL / ASF {space.asf:g}; "
                    f"{ETIV_LABEL} = {space.etiv_ml:.1f} mL.")
        self.space_note.setText(note)
        self.space_note.setVisible(bool(note))
        self._fill_table(space)

    def _fill_table(self, space: Space) -> None:
        st, table = self.stats, self.table
        native = st["native_volumes_ml"] if space.is_atlas and space.native_known else None
        headers = ["Class", "Voxels", f"Volume ({space.unit})", "Fraction of ICV"] + (["Native (mL)"] if native else [])
        table.clear()
        table.setRowCount(0)
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)

        def add(cells) -> None:
            r = table.rowCount()
            table.insertRow(r)
            for c, text in enumerate(cells):
                if text is not None:
                    table.setItem(r, c, QtWidgets.QTableWidgetItem(text))

        for tc in tissue_classes():
            row = st["classes"][tc.key]
            frac = row["icv_fraction"]
            add([tc.name, f"{row['voxels']:,}", f"{row['volume_ml']:.2f}", "" if frac is None else f"{100 * frac:.1f} %"]
                + ([f"{native[tc.key]:.2f}"] if native else []))
        add(["Intracranial (CSF+GM+WM)", None, f"{st['icv_ml']:.2f}", None]
            + ([f"{st['native_icv_ml']:.2f}"] if native else []))
        if native and st.get("etiv_oasis_ml") is not None:
            add([ETIV_LABEL, None, None, None, f"{st['etiv_oasis_ml']:.2f}"])
        table.resizeColumnsToContents()

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
