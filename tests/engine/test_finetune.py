"""Fine-tuning writes a new version with Dice and a confusion matrix; cancel writes nothing;
the store activates, compares and rolls back versions."""
import json

import numpy as np
import pytest

from engine.core.cancel import Cancelled, CancelToken
from engine.store.versions import ModelStore
from engine.train.finetune import FinetuneConfig, finetune, scan_fingerprint, split_slices


def _volume():
    shape = (40, 48, 12)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(x**2 + y**2)
    lab = np.zeros(shape, np.uint8)
    lab[r < 0.9] = 1
    lab[r < 0.75] = 2
    lab[r < 0.45] = 3
    scan = np.choose(lab, [0, 40, 110, 170]).astype(np.float32)
    return scan, lab


def test_split_holds_back_validation_slices():
    tr, va = split_slices(list(range(10)), 0.2, 1)
    assert len(va) == 2 and not set(tr) & set(va) and sorted(tr + va) == list(range(10))
    assert split_slices([4], 0.2, 1) == ([4], [])


def test_finetune_writes_new_version_with_stats(tiny_model_dir, tmp_path):
    scan, lab = _volume()
    epochs = []
    res = finetune(scan, lab, [2, 4, 6, 8, 10], tiny_model_dir, tmp_path / "v1",
                   FinetuneConfig(epochs=2, batch_size=2, steps_per_epoch=2), on_epoch=epochs.append,
                   scan_name="/data/patients/Doe_Jane_1957/t1.nii.gz")
    meta = json.loads((tmp_path / "v1" / "model.json").read_text())
    # privacy: no folder (often a patient's name) in the record, only a hash of the file name
    assert meta["parent"] == "tiny-test" and meta["scan"].startswith("salted-sha256:")  # salted (issue #20)
    assert "Doe" not in (tmp_path / "v1" / "model.json").read_text()
    assert meta["scan"] == scan_fingerprint("/elsewhere/t1.nii.gz")  # same file name, same hash
    assert len(meta["after"]["confusion_matrix"]) == 4 and "gm" in meta["after"]["dice"]
    assert meta["before"]["confusion_matrix"] is not None
    assert sorted(meta["train_slices"] + meta["val_slices"]) == [2, 4, 6, 8, 10] and res.val_slices
    assert [e.epoch for e in epochs] == [1, 2]
    assert (tmp_path / "v1" / "model.params").exists()


def test_decoder_only_leaves_encoder_unchanged(tiny_model_dir, tmp_path):
    from engine.infer.inference import load_network

    scan, lab = _volume()
    finetune(scan, lab, [3, 5, 7], tiny_model_dir, tmp_path / "dec",
             FinetuneConfig(epochs=1, batch_size=2, steps_per_epoch=2, layers="decoder"))
    a, _ = load_network(tiny_model_dir)
    b, _ = load_network(tmp_path / "dec")
    pa, pb = a.initial.conv.weight.data().asnumpy(), b.initial.conv.weight.data().asnumpy()
    np.testing.assert_array_equal(pa, pb)
    assert not np.allclose(a.fullconv.weight.data().asnumpy(), b.fullconv.weight.data().asnumpy())


def test_cancel_writes_nothing(tiny_model_dir, tmp_path):
    scan, lab = _volume()
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        finetune(scan, lab, [2, 4, 6], tiny_model_dir, tmp_path / "vx", FinetuneConfig(epochs=1), cancel=tok)
    assert not (tmp_path / "vx").exists()


def test_store_activate_compare_rollback(tiny_model_dir, tmp_path):
    scan, lab = _volume()
    store = ModelStore(tmp_path / "models")
    name, d = store.new_version_dir("enet")
    assert name == "enet-v001"
    finetune(scan, lab, [2, 4, 6], tiny_model_dir, d, FinetuneConfig(epochs=1, batch_size=2, steps_per_epoch=1),
             version=name)
    store.activate("enet", tiny_model_dir)
    store.activate("enet", d)
    assert store.active_dir("enet") == d
    assert store.new_version_dir("enet")[0] == "enet-v002"
    assert any(v.version == "enet-v001" for v in store.versions("enet"))
    cmp = store.compare(tiny_model_dir, d)
    assert cmp["b"]["parent"] == "tiny-test"
    # parent and child: both Dice from the child's record, on the same held-back slices
    meta = json.loads((d / "model.json").read_text())
    assert cmp["a"]["dice"] == meta["before"]["dice"] and cmp["b"]["dice"] == meta["after"]["dice"]
    assert "same" in cmp["basis"] and cmp == {**store.compare(d, tiny_model_dir), "a": cmp["a"], "b": cmp["b"]}
    # two siblings were measured on different slices: no Dice side by side
    name2, d2 = store.new_version_dir("enet")
    finetune(scan, lab, [3, 5, 7], tiny_model_dir, d2, FinetuneConfig(epochs=1, batch_size=2, steps_per_epoch=1),
             version=name2)
    sib = store.compare(d, d2)
    assert sib["a"]["dice"] is None and sib["b"]["dice"] is None and "not measured on the same" in sib["basis"]
    assert store.rollback("enet") == tiny_model_dir
    assert store.active_dir("enet") == tiny_model_dir


def test_first_fine_tune_can_be_rolled_back_to_the_shipped_model(tiny_model_dir, tmp_path, monkeypatch):
    """The shipped model is active implicitly; activating the first fine-tune records it, so
    rollback brings it back (it used to say 'no earlier version')."""
    import engine.store.versions as versions

    monkeypatch.setattr(versions, "shipped_model_dir", lambda arch: tiny_model_dir)
    store = ModelStore(tmp_path / "models")
    name, d = store.new_version_dir("enet")
    scan, lab = _volume()
    finetune(scan, lab, [2, 4, 6], tiny_model_dir, d, FinetuneConfig(epochs=1, batch_size=2, steps_per_epoch=1),
             version=name)
    assert store.active_dir("enet") == tiny_model_dir
    store.activate("enet", d)  # no explicit activation of the shipped model before
    assert store.rollback("enet") == tiny_model_dir and store.active_dir("enet") == tiny_model_dir


def test_a_corrupt_active_json_is_kept_aside_and_reported(tiny_model_dir, tmp_path, monkeypatch, caplog):
    import engine.store.versions as versions

    monkeypatch.setattr(versions, "shipped_model_dir", lambda arch: tiny_model_dir)
    root = tmp_path / "models"
    store = ModelStore(root)
    (root / "active.json").write_text('{"enet": "/some/where", "history": {')  # cut off mid-write
    assert store.active_dir("enet") == tiny_model_dir
    backups = list(root.glob("active.json.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_text().startswith('{"enet"')
    assert store.problems and "unreadable" in store.problems[0] and "active.json" in caplog.text


def test_finetune_learns_from_coronal_and_sagittal_corrections_too(tiny_model_dir, tmp_path):
    """Corrections made in other planes are training data in that plane (the networks were trained
    on all three): the record lists them as 'coronal:k', crops of different shapes share one canvas,
    and the held-back slices may be of any plane."""
    scan, lab = _volume()  # 40 x 48 x 12: axial slices 40x48, coronal 40x12, sagittal 48x12
    res = finetune(scan, lab, [3, 7], tiny_model_dir, tmp_path / "v",
                   FinetuneConfig(epochs=1, batch_size=2, steps_per_epoch=2, val_fraction=0.4),
                   plane_slices={"coronal": [20, 24], "sagittal": [15]})
    meta = json.loads((tmp_path / "v" / "model.json").read_text())
    got = sorted(map(str, meta["train_slices"] + meta["val_slices"]))
    assert got == sorted(["3", "7", "coronal:20", "coronal:24", "sagittal:15"])
    assert set(meta["crop_box"]) == {"axial", "coronal", "sagittal"}
    assert len(res.val_slices) == 2 and meta["after"]["confusion_matrix"] is not None
    with pytest.raises(ValueError, match="no corrected slices"):
        finetune(scan, lab, [], tiny_model_dir, tmp_path / "none", plane_slices={"coronal": [999]})


def test_a_calibrated_parent_is_scored_as_the_user_saw_it_and_its_fine_tune_carries_no_calibration(
        gentle_model_dir, tmp_path):
    """Issue #21: the shipped ENet carries calibration.class_weights. "Before" scores the parent's
    labels with its calibration (what the user corrected); the new version has none (the user's
    corrections set its boundaries)."""
    import shutil

    from engine.nets.weights import read_model_dir

    scan, lab = _volume()
    gentle = gentle_model_dir  # small weights: no softmax saturates to exactly 0
    parent = tmp_path / "parent"
    shutil.copytree(gentle, parent)
    meta = json.loads((parent / "model.json").read_text())
    meta["calibration"] = {"class_weights": [1e-6, 1e6, 1e-6, 1e-6]}  # every pixel CSF
    (parent / "model.json").write_text(json.dumps(meta))
    cfg = FinetuneConfig(epochs=1, batch_size=2, steps_per_epoch=1)
    finetune(scan, lab, [2, 4, 6, 8, 10], parent, tmp_path / "v", cfg)
    rec = json.loads((tmp_path / "v" / "model.json").read_text())
    cm = np.array(rec["before"]["confusion_matrix"])  # rows: truth, columns: prediction
    assert cm.sum() > 0 and cm[:, 1].sum() == cm.sum(), "the parent was scored with its calibration"
    assert "calibration" not in rec and read_model_dir(tmp_path / "v").class_weights is None
    finetune(scan, lab, [2, 4, 6, 8, 10], gentle, tmp_path / "plain", cfg)
    plain = np.array(json.loads((tmp_path / "plain" / "model.json").read_text())["before"]["confusion_matrix"])
    assert plain[:, 1].sum() < plain.sum(), "an uncalibrated parent is scored by its plain argmax"
