"""The model store (issue #20): a version's folder is reserved when a fine-tune starts, so two that
overlap never share a name; a missing active version is an error that names it."""
import json
import shutil

import pytest

from engine.cli import main
from engine.store.versions import MissingVersionError, ModelStore, resolve_model


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSEG_HOME", str(tmp_path / "home"))
    return ModelStore()


def test_overlapping_fine_tunes_get_different_versions(store):
    a_name, a_dir = store.new_version_dir("enet")  # the panel's fine-tune starts...
    b_name, b_dir = store.new_version_dir("enet")  # ...and the CLI's, before the first wrote anything
    assert a_name != b_name and a_dir.is_dir() and b_dir.is_dir()
    assert (a_name, b_name) == ("enet-v001", "enet-v002")
    (store.root / "enet" / "enet-v003").mkdir()  # taken by a third process meanwhile
    assert store.new_version_dir("enet")[0] == "enet-v004"


def test_a_missing_active_version_is_named_not_replaced_silently(store, tiny_model_dir, capsys):
    v = store.root / "enet" / "enet-v001"
    shutil.copytree(tiny_model_dir, v)
    store.activate("enet", v)
    assert store.active_dir("enet") == v
    shutil.rmtree(v)  # deleted, moved, a disk not mounted
    with pytest.raises(MissingVersionError, match="enet-v001 is missing"):
        store.active_dir("enet")
    with pytest.raises(MissingVersionError):
        resolve_model("enet", None)
    assert main(["models", "list", "--model", "enet"]) == 0
    assert "enet-v001 is missing" in capsys.readouterr().err
    assert main(["models", "activate", "shipped", "--model", "enet"]) == 0
    state = json.loads((store.root / "active.json").read_text())
    assert store.active_dir("enet") == store.use_shipped("enet") and "enet" in state


@pytest.mark.parametrize("before, after, ok, words", [
    ([0.8], [0.95], False, "only 1 held-back slice"),
    ([0.8] * 4, [0.9] * 4, False, "only 4 held-back slices"),
    ([0.8] * 6, [0.9, 0.7, 0.85, 0.75, 0.82, 0.79], False, "may be worse"),
    ([0.8] * 6, [0.79] * 6, False, "may be worse"),
    ([0.8] * 6, [0.85, 0.84, 0.86, 0.83, 0.85, 0.86], True, "95 % CI +0.0"),
])
def test_activation_needs_five_slices_and_a_confident_gain(before, after, ok, words):
    from engine.train.finetune import activation_verdict

    got, why = activation_verdict({"per_slice": before}, {"per_slice": after})
    assert got is ok and words in why, why
