"""A missing active model version is asked about, with the shipped model offered (issue #20)."""
import shutil

from engine.nets.weights import shipped_model_dir


def test_a_missing_active_version_is_asked_about(enet_window, small_scan, qtbot, dialogs, tiny_model_dir):
    win = enet_window
    v = win.model_store.root / "enet" / "enet-v007"
    shutil.copytree(tiny_model_dir, v)
    win.model_store.activate("enet", v)
    shutil.rmtree(v)
    win.open_scan(small_scan[0])
    dialogs.yes = True
    with qtbot.waitSignal(win.segmentationFinished, timeout=60000):
        win.actions["segment"].trigger()
    assert any("enet-v007: the active ENet version is missing" in q for q in dialogs.questions), dialogs.questions
    assert win.model_store.active_dir("enet") == shipped_model_dir("enet")
