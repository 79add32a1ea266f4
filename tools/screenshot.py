"""Take the README screenshot: open the demo scan, segment it with the chosen model, show the
overlay, and save the window as a PNG (run under Xvfb or on a desktop).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tools/screenshot.py docs/screenshot.png [--model unet]
"""
from __future__ import annotations

import argparse
import os
import sys

from engine.core.mx_env import configure_threads


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", default="unet")
    ap.add_argument("--tool", default="brush")
    ap.add_argument("--panel", action="store_true", help="show the fine-tune panel too")
    ap.add_argument("--scan", help="open this scan instead of the demo")
    args = ap.parse_args(argv)
    os.environ.setdefault("BRAINSEG_HOME", "/tmp/brainseg-screenshot")
    configure_threads(interactive=True)
    import pyqtgraph as pg
    from PyQt5 import QtCore, QtWidgets

    pg.setConfigOptions(imageAxisOrder="row-major")
    app = QtWidgets.QApplication(sys.argv[:1])
    from brainseg_gui.main_window import MainWindow
    from engine.core.paths import DEMO_SCAN

    win = MainWindow()
    win.resize(1560, 960)
    win.show()
    win.segment_panel.model_combo.setCurrentIndex(win.segment_panel.model_combo.findData(args.model))
    win.open_scan(args.scan or DEMO_SCAN)
    done = []
    win.segmentationFinished.connect(done.append)
    win.engine.failed.connect(lambda *a: done.append(a))
    win.segment_actions.start_segmentation()
    while not done:
        app.processEvents(QtCore.QEventLoop.AllEvents, 50)
    win.editing._set_tool(args.tool)
    if not args.scan:
        win.set_cursor((88, 120, 95))
    if args.panel:
        win.training_dock.show()
    for _ in range(20):
        app.processEvents()
    QtCore.QThread.msleep(300)
    app.processEvents()
    win.grab().save(args.out)
    print("saved", args.out, "-", win.statusBar().currentMessage())
    win.labelmap.mark_clean()
    win.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
