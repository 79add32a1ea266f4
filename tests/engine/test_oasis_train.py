"""`brainseg train` on a tiny fake OASIS-1 tree: finding subjects through their Analyze headers,
the subject-level split, one epoch of a tiny U-Net with validation Dice, best model and checkpoint,
resuming, PNG export and the command line."""
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.core.cancel import Cancelled, CancelToken
from engine.train.oasis import (
    Subject,
    TrainConfig,
    export_png_pairs,
    find_subjects,
    median_frequency_weights,
    split_subjects,
    train,
)

SHAPE = (32, 40, 6)
TINY = {"model": "unet", "unet_base": 4, "unet_levels": 3, "batch_size": 4, "augment": False, "log_every": 1}


def synthetic_subject(seed: int, shape=SHAPE, empty_slices=(0,)) -> tuple[np.ndarray, np.ndarray]:
    """A head-like phantom: WM core, GM ring, CSF rim; int16 image and uint8 labels."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    image = np.zeros(shape, np.int16)
    labels = np.zeros(shape, np.uint8)
    for k in range(shape[2]):
        if k in empty_slices:
            continue
        s = 0.8 + 0.1 * np.sin(k + seed)
        r = np.sqrt((x / s) ** 2 + (y / (s * 0.9)) ** 2)
        lab = np.zeros(shape[:2], np.uint8)
        lab[r < 0.95] = 1
        lab[r < 0.8] = 2
        lab[r < 0.5] = 3
        labels[:, :, k] = lab
        img = np.choose(lab, [0, 250, 600, 900]) + rng.normal(0, 30, shape[:2]) * (lab > 0)
        image[:, :, k] = np.clip(img, 0, None).astype(np.int16)
    return image, labels


def write_oasis_subject(root: Path, sid: str, image: np.ndarray, labels: np.ndarray, masked: bool = False,
                        with_labels: bool = True) -> None:
    """OASIS-1 layout: Analyze 7.5 big-endian int16 image, uint8 4-D singleton FSL_SEG labels."""
    t88 = root / sid / "PROCESSED" / "MPRAGE" / "T88_111"
    t88.mkdir(parents=True)
    hdr = nib.AnalyzeHeader(endianness=">")
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(image.shape)
    nib.save(nib.AnalyzeImage(image, None, header=hdr), str(t88 / f"{sid}_mpr_n4_anon_111_t88_gfc.hdr"))
    if masked:
        nib.save(nib.AnalyzeImage(image, None, header=hdr), str(t88 / f"{sid}_mpr_n4_anon_111_t88_masked_gfc.hdr"))
    if with_labels:
        seg = root / sid / "FSL_SEG"
        seg.mkdir(parents=True)
        lh = nib.AnalyzeHeader(endianness=">")
        lh.set_data_dtype(np.uint8)
        lh.set_data_shape(labels.shape + (1,))
        nib.save(nib.AnalyzeImage(labels[..., None], None, header=lh),
                 str(seg / f"{sid}_mpr_n4_anon_111_t88_masked_gfc_fseg.hdr"))


def make_oasis_tree(root: Path, n: int = 4, identical: bool = False, **kw) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, labels = synthetic_subject(0 if identical else i, **kw)
        write_oasis_subject(root, f"OAS1_{i + 1:04d}_MR1", image, labels, masked=(i == 1))
    return root


@pytest.fixture
def oasis(tmp_path):
    return make_oasis_tree(tmp_path / "oasis")


def test_find_subjects_reads_the_oasis_layout(oasis):
    subs = find_subjects(oasis)
    assert [s.id for s in subs] == [f"OAS1_{i:04d}_MR1" for i in range(1, 5)]
    assert subs[1].image_path.name.endswith("t88_masked_gfc.hdr")  # masked preferred
    assert subs[0].image_path.name.endswith("t88_gfc.hdr") and "masked" not in subs[0].image_path.name
    assert all(s.label_path.parent.name == "FSL_SEG" for s in subs)


def test_find_subjects_skips_unlabelled_and_names_the_folder(tmp_path, caplog):
    root = make_oasis_tree(tmp_path / "d", n=2)
    image, labels = synthetic_subject(9)
    write_oasis_subject(root, "OAS1_0042_MR1", image, labels, with_labels=False)
    with caplog.at_level(logging.WARNING):
        subs = find_subjects(root)
    assert [s.id for s in subs] == ["OAS1_0001_MR1", "OAS1_0002_MR1"]
    assert "OAS1_0042_MR1" in caplog.text and "FSL_SEG" in caplog.text

    lonely = tmp_path / "lonely"
    write_oasis_subject(lonely, "OAS1_0007_MR1", image, labels, with_labels=False)
    with pytest.raises(ValueError, match="lonely.*none has both"):
        find_subjects(lonely)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no training subjects"):
        find_subjects(tmp_path / "empty")


def test_find_subjects_plain_pairs(tmp_path):
    image, labels = synthetic_subject(3)
    for name, tag in (("a", "_seg"), ("b", "_fseg"), ("c", "_labels")):
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / f"{name}{tag}.nii"))
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "orphan.nii.gz"))
    subs = find_subjects(tmp_path)
    assert [s.id for s in subs] == ["a", "b", "c"]
    assert subs[1].label_path.name == "b_fseg.nii"


def test_split_is_deterministic_and_by_subject():
    subs = [Subject(f"S{i:02d}", Path(f"{i}.nii"), Path(f"{i}_seg.nii")) for i in range(10)]
    tr, va = split_subjects(subs)
    assert (len(tr), len(va)) == (8, 2)
    assert not {s.id for s in tr} & {s.id for s in va}
    assert split_subjects(list(reversed(subs))) == (tr, va)  # input order does not matter
    assert split_subjects(subs, seed=7) != (tr, va)
    tr2, va2 = split_subjects(subs[:2])
    assert len(tr2) == 1 and len(va2) == 1
    assert split_subjects(subs[:1]) == (subs[:1], [])


def test_split_keeps_a_persons_sessions_together():
    """OASIS-1 re-scanned some people (…_MR1 and …_MR2): both scans land on the same side."""
    subs = [Subject(f"OAS1_{i:04d}_MR{m}", Path(f"{i}{m}.nii"), Path(f"{i}{m}_seg.nii"))
            for i in range(1, 11) for m in ((1, 2) if i % 3 == 0 else (1,))]
    for seed in range(5):
        tr, va = split_subjects(subs, seed=seed)
        people = lambda part: {s.id[:9] for s in part}  # noqa: E731
        assert not people(tr) & people(va) and len(tr) + len(va) == len(subs)
        assert len(people(va)) == 2  # 20 % of 10 people


def test_median_frequency_weights():
    w = median_frequency_weights([600, 100, 200, 100], [1000, 1000, 1000, 500])
    freq = np.array([0.6, 0.1, 0.2, 0.2])
    assert np.allclose(w, np.median(freq) / freq)
    assert median_frequency_weights([10, 0, 5, 5], [10, 0, 10, 10])[1] == 1.0


def test_train_one_epoch_then_resume(oasis, tmp_path):
    """Two-epoch run stopped after epoch 1 (cancel), then resumed: the checkpoint carries on, and
    the result equals an uninterrupted run bit for bit (same data order, optimizer state, schedule)."""
    out = tmp_path / "run"
    lines = []
    cancel = CancelToken()

    def on_progress(p):
        lines.append(p)
        if p.kind == "epoch":
            cancel.cancel()

    with pytest.raises(Cancelled):
        train(TrainConfig(str(oasis), str(out), epochs=2, **TINY), progress=on_progress, cancel=cancel)
    meta = json.loads((out / "best" / "model.json").read_text())
    assert meta["arch"] == "unet" and meta["arch_kwargs"] == {"base": 4, "levels": 3}
    assert meta["epoch"] == 1 and set(meta["dice"]) == {"background", "csf", "gm", "wm"}
    assert all(0.0 <= v <= 1.0 for v in meta["dice"].values() if v is not None)
    assert sorted(meta["train_subjects"] + meta["val_subjects"]) == [f"OAS1_{i:04d}_MR1" for i in range(1, 5)]
    assert len(meta["val_subjects"]) == 1 and not set(meta["train_subjects"]) & set(meta["val_subjects"])
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    steps_per_epoch = state["steps_per_epoch"]
    assert state["epoch"] == 1 and state["step"] == steps_per_epoch > 0
    assert (out / "checkpoint" / "trainer.states").stat().st_size > 0
    assert any(p.kind == "step" for p in lines) and lines[-1].kind == "epoch" and lines[-1].val_dice
    assert "val Dice" in lines[-1].line()

    with pytest.raises(ValueError, match="already holds a training checkpoint"):
        train(TrainConfig(str(oasis), str(out), epochs=2, **TINY))
    res2 = train(TrainConfig(str(oasis), str(out), epochs=2, resume=True, **TINY))
    state2 = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state2["epoch"] == 2 and res2.epochs_done == 2
    assert state2["step"] == res2.steps == 2 * steps_per_epoch  # went on counting, did not start over
    assert [h["epoch"] for h in state2["history"]] == [1, 2]

    straight = train(TrainConfig(str(oasis), str(tmp_path / "straight"), epochs=2, **TINY))
    assert straight.params_sha256 == res2.params_sha256


def test_export_png_pairs(oasis, tmp_path):
    import imageio.v3 as iio

    subs = find_subjects(oasis)[:2]
    n = export_png_pairs(subs, tmp_path / "png")
    assert n == 2 * SHAPE[2]
    img = iio.imread(tmp_path / "png" / "images" / f"{subs[0].id}_003.png")
    lab = iio.imread(tmp_path / "png" / "labels" / f"{subs[0].id}_003.png")
    assert img.dtype == np.uint8 and img.shape == SHAPE[:2] and img.max() > 200
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2, 3} and 3 in lab


def test_command_line_trains_enet(oasis, tmp_path, capsys):
    from engine.train.oasis import main

    out = tmp_path / "enet"
    rc = main([str(oasis), "--model", "enet", "--epochs", "1", "--batch-size", "4", "--no-augment",
               "--class-weights", "median", "-o", str(out)])
    assert rc == 0
    assert "val Dice" in capsys.readouterr().out
    meta = json.loads((out / "best" / "model.json").read_text())
    assert meta["arch"] == "enet" and len(meta["class_weights"]) == 4
    assert main([str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")]) == 2


def test_training_slices_come_from_three_planes_of_the_las_grid(tmp_path):
    """A NIfTI pair stored RAS (np.eye affine) is flipped to LAS before slicing, and the slice set
    holds axial, coronal and sagittal slices of it."""
    from engine.train.oasis import load_slices, load_subject

    image, labels = synthetic_subject(4)
    labels[0, :, :] = 0
    labels[1, :, 3] = 3  # a marker on the patient's right edge (x index 1 of a RAS array)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "a.nii.gz"))
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "a_seg.nii.gz"))
    sub = find_subjects(tmp_path)[0]
    img_w, lab_w = load_subject(sub)
    assert lab_w.shape == labels.shape and lab_w[-2, 5, 3] == 3  # LAS: the right edge is now last
    one = load_slices([sub], 4, ("axial",))
    three = load_slices([sub], 4, ("axial", "coronal", "sagittal"))
    planes = {o[0].split("/")[1] if "/" in o[0] else "axial" for o in three.origin}
    assert planes == {"axial", "coronal", "sagittal"}
    assert len(three) > len(one) == int((labels > 0).any(axis=(0, 1)).sum())
