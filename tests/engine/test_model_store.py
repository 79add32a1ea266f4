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


def _fake_version(store, name, parent="enet-shipped-4", dice=None, params=b"weights"):
    """A model version folder without MXNet: a model.json and a params file with its checksum."""
    import hashlib

    d = store.root / "enet" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.params").write_bytes(params)
    meta = {"arch": "enet", "version": name, "parent": parent, "created": "2026-12-03 10:00:00",
            "sha256": hashlib.sha256(params).hexdigest(), "after": {"mean_tissue_dice": dice}}
    (d / "model.json").write_text(json.dumps(meta))
    return d


def test_versions_activation_history_and_rollback_without_mxnet(store):
    from engine.nets.weights import WeightsError, shipped_model_dir

    a = _fake_version(store, "enet-v001", dice=0.81)
    b = _fake_version(store, "enet-v002", parent="enet-v001", dice=0.83)
    (store.root / "enet" / "enet-v003").mkdir()  # reserved by a fine-tune that never finished: not listed
    vs = store.versions("enet")
    assert [v.version for v in vs][1:] == ["enet-v001", "enet-v002"] and vs[0].shipped
    assert vs[2].parent == "enet-v001" and vs[2].after["mean_tissue_dice"] == 0.83
    assert store.active_dir("enet") == shipped_model_dir("enet")
    store.activate("enet", a)
    store.activate("enet", b)
    assert store.active_dir("enet") == b
    assert store.rollback("enet") == a and store.active_dir("enet") == a
    assert store.rollback("enet") == shipped_model_dir("enet")
    with pytest.raises(WeightsError, match="no earlier enet version"):
        store.rollback("enet")
    (b / "model.params").write_bytes(b"changed")  # a damaged version is refused
    with pytest.raises(WeightsError, match="checksum mismatch"):
        store.activate("enet", b)
    assert store.active_dir("enet") == shipped_model_dir("enet")


def test_a_corrupt_store_state_is_kept_aside_and_said(store):
    _fake_version(store, "enet-v001")
    (store.root / "active.json").write_text("{not json")
    assert store.versions("enet")  # still listed
    assert store._state() == {} and any("unreadable" in p for p in store.problems)
    assert list(store.root.glob("active.json.corrupt-*")), "kept aside, not deleted"
    (store.root / "enet" / "enet-v001" / "model.json").write_text("{broken")
    assert [v.version for v in store.versions("enet")] == [store.versions("enet")[0].version]  # shipped only
    assert any("that version is not listed" in p for p in store.problems)
