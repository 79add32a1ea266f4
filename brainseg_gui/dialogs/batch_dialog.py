"""File > Segment a cohort: `brainseg batch` from the GUI.

The batch runs as a separate process (the same `brainseg batch` as on the command line, with the
model the app would use), so the window stays responsive and the engine thread stays free; its
progress lines fill a bar and a log. Stop asks it, through a stop file in the output folder (the
same on every platform), to stop after the scan in progress: rows stay whole and Continue
(--resume) picks up from there. At the end, Open report shows report.html. There is one dialog
per window: closing it with a batch running asks; Esc only hides it.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from PyQt5 import QtCore, QtGui, QtWidgets

from .. import dialogs

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
        self.output.textChanged.connect(lambda _t: self._update())
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
        env.insert("PYTHONIOENCODING", "utf-8")  # the log is read as UTF-8 on every platform
        self.proc.setProcessEnvironment(env)
        self.proc.setProcessChannelMode(QtCore.QProcess.MergedChannels)
        self.proc.readyReadStandardOutput.connect(self._read)
        self.proc.finished.connect(self._done)
        self.proc.errorOccurred.connect(self._failed_to_start)
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

    def _failed_to_start(self, err) -> None:
        if err == QtCore.QProcess.FailedToStart:
            self.status.setText(f"The batch could not start: {self.proc.errorString()}")
            self._update()

    def stop(self) -> None:
        """Ask the batch to stop after the scan in progress (its row stays whole)."""
        from engine.batch import STOP_FILE

        if self.running:
            if self.progress.value() == 0:  # still starting: nothing written yet, nothing to keep
                self.proc.kill()
                return
            out = Path(self.output.text().strip())
            try:
                (out / STOP_FILE).touch()
                self.status.setText("Stopping after the current scan...")
            except OSError as exc:
                self.status.setText(f"Could not ask the batch to stop ({exc}); stopping it now")
                self.proc.kill()

    def open_report(self) -> None:
        """Open report.html in the browser; where none opens (no browser, a headless machine), say so
        and where the file is, with its path on the clipboard (issue #20: nothing visible happened)."""
        report = (Path(self.output.text().strip()) / "report.html").resolve()
        if not report.exists():
            dialogs.show_error(self, "No report yet", f"{report}: there is no report yet (it is written when the "
                               "batch ends or stops).")
            return
        if not QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(str(report))):
            QtWidgets.QApplication.clipboard().setText(str(report))
            dialogs.show_info(self, "Open the report in a browser",
                              f"No web browser could be started here. The report is\n{report}\n\n(its path is on "
                              "the clipboard: open it in a browser, or copy the folder to a machine with one)")

    def closeEvent(self, ev):
        if self.running and not self.confirm_stop():
            ev.ignore()
            return
        ev.accept()

    def confirm_stop(self) -> bool:
        """Asked when the dialog or the app closes with a batch running: stop it now (rows done so
        far are whole; Continue resumes) or keep it. True when it is stopped."""
        if not self.running:
            return True
        if not dialogs.ask_yes_no(self, "Stop the batch?",
                                  "The batch is still running. Stop it now? The rows done so far are kept; "
                                  "Continue resumes it later."):
            return False
        self.proc.kill()  # rows and files are written whole, so nothing half-done stays behind
        self.proc.waitForFinished(5000)
        return True
