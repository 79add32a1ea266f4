"""Start the BrainSeg window: `brainseg-gui [SCAN]` or `brainseg gui [SCAN]`.

Sets the thread policy before MXNet loads (interactive: OpenMP workers sleep rather than spin
next to the GUI thread), logs to <data dir>/logs/brainseg.log, and installs a global exception
hook that logs and shows unexpected errors instead of dying.
"""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys
import traceback

from engine.core.mx_env import configure_threads
from engine.core.paths import DEMO_SCAN, data_dir

log = logging.getLogger("brainseg_gui")


def setup_logging(level=logging.INFO) -> str:
    logdir = data_dir() / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / "brainseg.log"
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(level)
    if not any(isinstance(h, logging.handlers.RotatingFileHandler) for h in root.handlers):
        root.addHandler(handler)
    return str(path)


def crash_message(exc_type, exc, window) -> str:
    """The unexpected-error dialog's text: what happened, and the truth about the user's edits
    (autosaved when, not autosaved because, or nothing unsaved) from the session."""
    safety = ""
    try:
        safety = window.session.safety_summary()
    except Exception:  # the window itself may be what broke
        safety = "The state of your edits is unknown: save the labels now if you can."
    return f"{exc_type.__name__}: {exc}\n\nDetails are in the log file. {safety}"


def install_excepthook(window_getter) -> None:
    def hook(exc_type, exc, tb):
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        log.error("unexpected error:\n%s", text)
        try:
            from PyQt5 import QtWidgets

            win = window_getter()
            QtWidgets.QMessageBox.critical(win, "Unexpected error", crash_message(exc_type, exc, win))
        except Exception:
            sys.__excepthook__(exc_type, exc, tb)

    sys.excepthook = hook


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="brainseg-gui", description="BrainSeg: brain MRI tissue segmentation")
    ap.add_argument("scan", nargs="?", help="scan to open (.hdr/.img/.nii/.nii.gz)")
    ap.add_argument("--demo", action="store_true", help="open the bundled demo scan")
    ap.add_argument("--labels", help="label map to open with the scan")
    args = ap.parse_args(argv)
    configure_threads(interactive=True)
    logfile = setup_logging()
    import pyqtgraph as pg
    from PyQt5 import QtWidgets

    pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("BrainSeg")
    app.setOrganizationName("BrainSeg")
    from .main_window import MainWindow

    win = MainWindow()
    install_excepthook(lambda: win)
    win.show()
    log.info("BrainSeg started; log file %s", logfile)
    scan = args.scan or (str(DEMO_SCAN) if args.demo else None)
    if scan:
        win.open_scan(scan)
        if args.labels:
            win.open_labels(args.labels)
    return app.exec_()


if __name__ == "__main__":
    raise SystemExit(main())
