"""Child process for the crash-recovery test: open a scan, paint with the real widgets, wait for
the autosave, write the expected labels, say READY, then hang until killed."""
import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
import numpy as np  # noqa: E402
import pyqtgraph as pg  # noqa: E402
from PyQt5 import QtWidgets  # noqa: E402

pg.setConfigOptions(imageAxisOrder="row-major")


def main(scan: str, expected: str) -> None:
    app = QtWidgets.QApplication([])
    from brainseg_gui import main_window
    from tests.gui.helpers import drag

    main_window.AUTOSAVE_IDLE_MS = 200

    class Bot:
        def wait(self, ms):
            end = time.time() + ms / 1000
            while time.time() < end:
                app.processEvents()

    win = main_window.MainWindow(start_engine=False)
    win.autosave_timer.setInterval(200)
    win.show()
    win.open_scan(scan)
    win.actions["tool_brush"].trigger()
    win.actions["class_1"].trigger()
    ax = win.views["axial"]
    drag(Bot(), ax, [(5, 5), (5, 30), (20, 30)])
    ax.set_slice(ax.index + 2)  # a slice change autosaves too
    drag(Bot(), ax, [(25, 5), (40, 5)])
    saved = []
    win.autosaved.connect(saved.append)
    Bot().wait(1500)
    assert saved, "autosave did not run"
    np.save(expected, win.labelmap.labels)
    print("READY", win.labelmap.edit_count, flush=True)
    while True:
        app.processEvents()
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
