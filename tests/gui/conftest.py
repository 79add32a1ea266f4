"""GUI fixtures: offscreen Qt, an isolated data folder (QSettings, preferences, recovery files),
answered dialogs, and a main window that is closed without questions at the end."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pyqtgraph as pg  # noqa: E402
import pytest  # noqa: E402

pg.setConfigOptions(imageAxisOrder="row-major")


class Dialogs:
    """Records messages and answers questions instead of showing modal dialogs."""

    def __init__(self):
        self.errors, self.infos, self.questions = [], [], []
        self.yes = True
        self.save_discard = "discard"
        self.choice = None  # ask_choice: None answers the default
        self.number = None  # get_number and get_smoothing's mm: None cancels
        self.smooth_outline = False  # get_smoothing: smooth the brain's outline too
        self.open_path = ""
        self.open_dirs = []  # the folder each Open dialog started in
        self.save_path = ""
        self.directory = ""


def _widget_parent(fn):
    """A stand-in that, like Qt, refuses a parent that is not a QWidget (or None): a controller
    (QObject) passed as a dialog's parent raised TypeError in the real app - at the recovery offer -
    while every stand-in accepted it."""
    from PyQt5 import QtWidgets

    def stand_in(parent, *a, **k):
        assert parent is None or isinstance(parent, QtWidgets.QWidget), (
            f"a dialog's parent must be a QWidget or None (Qt raises TypeError), not {type(parent).__name__}")
        return fn(parent, *a, **k)

    return stand_in


@pytest.fixture
def dialogs(monkeypatch):
    from brainseg_gui import dialogs as mod

    d = Dialogs()
    monkeypatch.setattr(mod, "show_error", lambda p, t, m: d.errors.append(m))
    monkeypatch.setattr(mod, "show_info", lambda p, t, m: d.infos.append(m))
    monkeypatch.setattr(mod, "ask_yes_no", lambda p, t, m, default_yes=False: (d.questions.append(m), d.yes)[1])
    monkeypatch.setattr(mod, "ask_save_discard_cancel", lambda p, t, m: (d.questions.append(m), d.save_discard)[1])
    monkeypatch.setattr(mod, "ask_choice", lambda p, t, m, choices, default: (
        d.questions.append(m), d.choice if d.choice is not None else default)[1])
    monkeypatch.setattr(mod, "get_number", lambda p, t, m, value, lo, hi, decimals=0: (
        d.questions.append(m), d.number)[1])
    monkeypatch.setattr(mod, "get_smoothing", lambda p, mm: (
        d.questions.append("smoothing"), None if d.number is None else (d.number, d.smooth_outline))[1])
    monkeypatch.setattr(mod, "get_open_path", lambda p, t, f, directory="": (d.open_dirs.append(directory),
                                                                            d.open_path)[1])
    monkeypatch.setattr(mod, "get_save_path", lambda *a, **k: d.save_path)
    monkeypatch.setattr(mod, "get_directory", lambda *a, **k: d.directory)
    for name in ("show_error", "show_info", "ask_yes_no", "ask_save_discard_cancel", "ask_choice", "get_number",
                 "get_smoothing", "get_open_path", "get_save_path", "get_directory"):
        monkeypatch.setattr(mod, name, _widget_parent(getattr(mod, name)))
    return d


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("BRAINSEG_HOME", str(h))
    return h


@pytest.fixture
def window(qtbot, home, dialogs):
    from brainseg_gui.main_window import MainWindow
    from brainseg_gui.settings import Preferences

    # no background model loading on every scan opened (test_model_preloads_when_a_scan_opens
    # covers it): it would add a model load to each test
    win = MainWindow(prefs=Preferences(preload_model=False))
    qtbot.addWidget(win)
    win.show()
    yield win
    if win.labelmap is not None:
        win.labelmap.mark_clean()
    win.engine.stop()


@pytest.fixture
def small_scan(tmp_path):
    """A 48x56x20 'brain' (ellipsoid with three tissue shells) as Analyze, with its labels."""
    shape = (48, 56, 20)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(x**2 + y**2 + (z * 0.9) ** 2)
    lab = np.zeros(shape, np.uint8)
    lab[r < 0.95] = 1
    lab[r < 0.85] = 2
    lab[r < 0.6] = 3
    img = np.choose(lab, [0, 60, 120, 200]).astype(">i2")
    hdr = nib.AnalyzeHeader(endianness=">")
    hdr.set_data_dtype(">i2")
    hdr.set_data_shape(shape + (1,))
    hdr.set_zooms((1.0, 1.0, 1.2, 1.0))
    scan = tmp_path / "small_t88_masked_gfc.hdr"
    nib.save(nib.AnalyzeImage(img[..., None], hdr.get_best_affine(), header=hdr), str(scan))
    from engine.io.volume import save_labels

    labels = tmp_path / "small_fseg.nii.gz"
    save_labels(labels, lab, hdr.get_best_affine())
    return scan, labels, lab




@pytest.fixture
def enet_window(window, tiny_model_dir):
    """The main window with the (untrained, tiny-test) ENet as the active model."""
    window.segment_panel.model_combo.setCurrentIndex(window.segment_panel.model_combo.findData("enet"))
    window.model_store.activate("enet", tiny_model_dir)
    window.training_panel.refresh_versions()
    return window
