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


def test_a_changed_default_model_is_said_once_and_a_remembered_unet_still_works(qtbot, home, dialogs):
    """Issue #21: ENet became the default everywhere; a user whose machine used to get U-Net is told
    once; a user who chose U-Net keeps it."""
    from brainseg_gui.main_window import MainWindow
    from brainseg_gui.settings import Preferences

    Preferences(model="auto", preload_model=False, last_auto_model="unet").save()
    win = MainWindow(prefs=Preferences.load())
    qtbot.addWidget(win)
    text = win.segment_panel.reason.text()
    assert "The default model is now ENet (it was U-Net on this machine)" in text and "Will run ENet" in text
    win.engine.stop()
    again = MainWindow(prefs=Preferences.load())
    qtbot.addWidget(again)
    assert "The default model is now" not in again.segment_panel.reason.text(), "said once"
    again.engine.stop()
    Preferences(model="unet", preload_model=False).save()
    chosen = MainWindow(prefs=Preferences.load())
    qtbot.addWidget(chosen)
    assert chosen.segment_panel.reason.text().startswith("Will run U-Net: chosen by the user")
    chosen.engine.stop()


def test_the_panel_says_when_the_active_models_boundaries_are_calibrated(window, qtbot, tiny_model_dir):
    """Issue #21: the shipped ENet carries a CSF calibration (model.json); the panel says so, and
    stops saying it when an uncalibrated version (a fine-tune) is made active from the panel."""
    win = window
    assert "Will run ENet" in win.segment_panel.reason.text()
    assert "calibrated (CSF x0.753" in win.segment_panel.reason.text()
    assert ". Its class boundaries are calibrated" in win.segment_panel.reason.text(), "two sentences"
    v = win.model_store.root / "enet" / "enet-v001"
    shutil.copytree(tiny_model_dir, v)
    panel = win.training_panel
    panel.refresh_versions()
    items = [panel.versions.item(i) for i in range(panel.versions.count())]
    mine = [it for it in items if it.data(0x0100) == str(v)]  # Qt.UserRole
    assert mine, [it.text() for it in items]
    panel.versions.clearSelection()
    mine[0].setSelected(True)
    panel.activate_button.click()
    assert win.model_store.active_dir("enet") == v
    assert "Will run ENet" in win.segment_panel.reason.text()
    assert "calibrated" not in win.segment_panel.reason.text()
    panel.rollback_button.click()
    assert "calibrated (CSF x0.753" in win.segment_panel.reason.text()


def test_int8_is_on_by_default_where_offered_and_a_users_choice_is_kept(window, qtbot):
    """Issue #21: INT8 is the default where the model's record offers it (the shipped U-Net), as in
    the CLI; a user who unticks it keeps FP32 across model switches; ENet (not offered) is FP32."""
    from engine.infer.inference import int8_offer

    win = window
    combo, chk = win.segment_panel.model_combo, win.segment_panel.int8_check
    if not int8_offer(shipped_model_dir("unet"))[0]:
        import pytest

        pytest.skip("the shipped U-Net has no INT8 record")
    combo.setCurrentIndex(combo.findData("unet"))
    assert chk.isEnabled() and chk.isChecked() and win.segmentation.precision() == "int8"
    assert "on by default" in chk.toolTip()
    chk.click()  # the user unticks it
    assert not chk.isChecked()
    combo.setCurrentIndex(combo.findData("enet"))
    assert not chk.isEnabled() and not chk.isChecked() and win.segmentation.precision() == "fp32"
    combo.setCurrentIndex(combo.findData("unet"))
    assert chk.isEnabled() and not chk.isChecked(), "the user's FP32 choice is kept"
    from brainseg_gui.main_window import MainWindow
    from brainseg_gui.settings import Preferences

    again = MainWindow(prefs=Preferences.load())  # a restart
    qtbot.addWidget(again)
    again.segment_panel.model_combo.setCurrentIndex(again.segment_panel.model_combo.findData("unet"))
    assert again.segment_panel.int8_check.isEnabled() and not again.segment_panel.int8_check.isChecked()
    again.engine.stop()
