"""Nothing lost: edits autosave, the process is SIGKILLed, reopening the scan restores them."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_edits_survive_sigkill(window, small_scan, tmp_path, home, dialogs):
    scan, _, _ = small_scan
    expected = tmp_path / "expected.npy"
    env = dict(os.environ, BRAINSEG_HOME=str(home), QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tests.gui.recovery_child", str(scan), str(expected)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        for _ in range(200):
            line = proc.stdout.readline()
            if line.startswith("READY") or proc.poll() is not None:
                break
        assert line.startswith("READY"), proc.stderr.read()[-3000:]
        edits = int(line.split()[1])
        assert edits == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    dialogs.yes = True
    assert window.open_scan(scan)
    assert dialogs.questions and "2 edits" in dialogs.questions[-1]
    np.testing.assert_array_equal(window.labelmap.labels, np.load(expected))
    assert window.labelmap.edit_count == 2 and window.isWindowModified()
    # the restore is a new baseline: one Ctrl+Z does not wipe the restored edits
    window.actions["undo"].trigger()
    np.testing.assert_array_equal(window.labelmap.labels, np.load(expected))
