"""File > Segment a cohort: `brainseg batch` from the GUI.

The batch runs as a separate process (the same `brainseg batch` as on the command line, with the
model the app would use), so the window stays responsive and the engine thread stays free; its
progress lines fill a bar and a log. Stop sends it Ctrl+C: rows finished so far stay whole and
"Continue" (--resume) picks up where it stopped. At the end, Open report shows report.html.
"""
from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

from PyQt5 import QtCore, QtGui, QtWidgets

from . import dialogs

PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")


class BatchDialog(QtWidgets.QDialog):
    batchFinished = QtCore.pyqtSignal(int)  # the batch process's exit status

    def __init__(self, model_dir, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Segment a cohort")
        self.setObjectName("batch_dialog")
        self.resize(640, 520)
        self.model_dir = model_dir  # () -> the model folder Segment would use
        self.proc: QtCore.QProcess | None = None
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(QtWidgets.QLabel("Scans: files, folders, a BIDS dataset, an OASIS-1 tree or DICOM folders"))
        self.inputs = QtWidgets.QListWidget()
        self.inputs.setObjectName("batch_inputs")
        lay.addWidget(self.inputs, 1)
        row = QtWidgets.QHBoxLayout()
        for text, fn in (("Add folder...", self._add_folder), ("Add files...", self._add_files),
                         ("Remove", self._remove)):
            b = QtWidgets.QPushButton(text)
            b.clicked.connect(fn)
            row.addWidget(b)
        lay.addLayout(row)
        form = QtWidgets.QFormLayout()
        out_row = QtWidgets.QHBoxLayout()
        self.output = QtWidgets.QLineEdit()
        self.output.setObjectName("batch_output")
        choose = QtWidgets.QPushButton("Choose...")
        choose.clicked.connect(self._choose_output)
        out_row.addWidget(self.output, 1)
        out_row.addWidget(choose)
        form.addRow("Output folder", out_row)
        self.uncertainty = QtWidgets.QCheckBox("Also write uncertainty maps")
        form.addRow(self.uncertainty)
        lay.addLayout(form)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setObjectName("batch_progress")
        lay.addWidget(self.progress)
        self.status = QtWidgets.QLabel("")
        self.status.setObjectName("batch_status")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.log = QtWidgets.QPlainTextEdit()
        self.log.setObjectName("batch_log")
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        lay.addWidget(self.log, 1)
        bb = QtWidgets.QHBoxLayout()
        self.start_button = QtWidgets.QPushButton("Start")
        self.start_button.setObjectName("batch_start")
        self.start_button.clicked.connect(lambda: self.start(resume=False))
        self.resume_button = QtWidgets.QPushButton("Continue")
        self.resume_button.setToolTip("Go on with the batch in this output folder (--resume)")
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.stop_button = QtWidgets.QPushButton("Stop")
        self.stop_button.setObjectName("batch_stop")
        self.stop_button.clicked.connect(self.stop)
        self.report_button = QtWidgets.QPushButton("Open report")
        self.report_button.setObjectName("batch_report")
        self.report_button.clicked.connect(self.open_report)
        close = QtWidgets.QPushButton("Close")
        close.clicked.connect(self.close)
        for b in (self.start_button, self.resume_button, self.stop_button, self.report_button, close):
            bb.addWidget(b)
        lay.addLayout(bb)
        self._buf = ""
        self._update()

    # ------------------------------------------------------------------ inputs
    def add_inputs(self, paths) -> None:
        for p in paths:
            if p and not self.inputs.findItems(str(p), QtCore.Qt.MatchExactly):
                self.inputs.addItem(str(p))
        self._update()

    def _add_folder(self):
        d = dialogs.get_directory(self, "Add a folder of scans")
        if d:
            self.add_inputs([d])

    def _add_files(self):
        p = dialogs.get_open_path(self, "Add a scan", "Scans (*.hdr *.nii *.nii.gz *.dcm);;All files (*)")
        if p:
            self.add_inputs([p])

    def _remove(self):
        for it in self.inputs.selectedItems():
            self.inputs.takeItem(self.inputs.row(it))
        self._update()

    def _choose_output(self):
        d = dialogs.get_directory(self, "Output folder")
        if d:
            self.output.setText(d)
            self._update()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.state() != QtCore.QProcess.NotRunning

    def _update(self) -> None:
        ready = self.inputs.count() > 0 and bool(self.output.text().strip())
        self.start_button.setEnabled(ready and not self.running)
        self.resume_button.setEnabled(ready and not self.running
                                      and (Path(self.output.text().strip()) / "volumes.csv").exists())
        self.stop_button.setEnabled(self.running)
        self.report_button.setEnabled(not self.running and (Path(self.output.text().strip() or ".") /
                                                             "report.html").exists())

    # ------------------------------------------------------------------ running
    def command(self, resume: bool) -> list[str]:
        args = ["-m", "engine.cli", "batch", *[self.inputs.item(i).text() for i in range(self.inputs.count())],
                "-o", self.output.text().strip(), "--weights", str(self.model_dir())]
        if resume:
            args.append("--resume")
        if self.uncertainty.isChecked():
            args.append("--uncertainty")
        return args

    def start(self, resume: bool = False) -> bool:
        if self.running or not self.inputs.count() or not self.output.text().strip():
            return False
        out = Path(self.output.text().strip())
        if not resume and (out / "volumes.csv").exists():
            if not dialogs.ask_yes_no(self, "Continue that batch?",
                                      f"{out} already holds a batch. Continue it (scans already done are skipped)?",
                                      default_yes=True):
                return False
            resume = True
        self.proc = QtCore.QProcess(self)
        env = QtCore.QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        self.proc.setProcessEnvironment(env)
        self.proc.setProcessChannelMode(QtCore.QProcess.MergedChannels)
        self.proc.readyReadStandardOutput.connect(self._read)
        self.proc.finished.connect(self._done)
        self.log.clear()
        self.progress.setValue(0)
        self.status.setText("Starting (loading the model)...")
        self.proc.start(sys.executable, self.command(resume))
        self._update()
        return True

    def _read(self) -> None:
        self._buf += bytes(self.proc.readAllStandardOutput()).decode("utf-8", "replace")
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if "engine.cc" in line:  # MXNet's start-up chatter
                continue
            self.log.appendPlainText(line)
            m = PROGRESS.match(line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                self.progress.setMaximum(max(total, 1))
                self.progress.setValue(done)
                self.status.setText(line)
            elif line.startswith("resuming:") or " scans; model " in line or " scan; model " in line:
                self.status.setText(line)

    def _done(self, code: int, _status) -> None:
        self._read()
        if self._buf:
            self.log.appendPlainText(self._buf)
            self._buf = ""
        out = self.output.text().strip()
        text = {0: "Finished: every scan segmented.", 3: "Finished; some scans failed (their rows say why).",
                130: "Stopped. The rows done so far are whole; Continue picks up from there."}.get(
            code, f"The batch ended with status {code}; see the log.")
        self.status.setText(f"{text} Table: {Path(out) / 'volumes.csv'}")
        self._update()
        self.batchFinished.emit(code)

    def stop(self) -> None:
        """Ctrl+C for the batch: it finishes the row it is writing and stops."""
        if self.running:
            pid = int(self.proc.processId())
            if pid > 0:
                os.kill(pid, signal.SIGINT)
            self.status.setText("Stopping after the current scan...")

    def open_report(self) -> None:
        report = Path(self.output.text().strip()) / "report.html"
        if report.exists():
            QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(str(report)))

    def closeEvent(self, ev):
        if self.running and not dialogs.ask_yes_no(self, "Stop the batch?",
                                                   "The batch is still running. Stop it? (Continue resumes it.)"):
            ev.ignore()
            return
        self.stop()
        if self.proc is not None:
            self.proc.waitForFinished(15000)
        ev.accept()
