"""Tissue volume statistics of a label map: voxel counts, mL from the voxel size, fraction of the
intracranial volume (CSF + GM + WM), and the space they are in (native or atlas-space mL, with
native mL and OASIS's eTIV when an ASF is known: engine/io/space.py); written as CSV or JSON."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from engine.core.atomic import atomic_write
from engine.core.classes import TISSUE_KEYS, tissue_classes
from engine.io.space import ETIV_LABEL, Space
from engine.io.volume import Volume, label_volumes


def volume_stats(labels: np.ndarray | Volume, voxel_volume_ml: float | None = None, source: str = "",
                 space: Space | None = None) -> dict:
    """Per-class voxels, mL and fraction of the intracranial volume (CSF + GM + WM).

    Give a label `Volume` (its voxel size and file name are used), or a uint8 array together with
    `voxel_volume_ml`. The dict has `classes` (per class: value, name, voxels, volume_ml,
    icv_fraction), the flat maps `volumes_ml`, `voxels`, `icv_fraction` (tissues only), `icv_ml`,
    `voxel_volume_ml` and `file`; it is what `brainseg stats --json` prints.

    `space` (default: the Volume's own, Space.of; native for a bare array) adds `space` (native or
    atlas), `space_reason`, `volume_unit` (mL or atlas-space mL), `asf`, `native_volumes_ml` and
    `native_icv_ml` (None for atlas space without an ASF) and `etiv_oasis_ml` (1755 / ASF)."""
    if isinstance(labels, Volume):
        voxel_volume_ml = labels.voxel_volume_ml if voxel_volume_ml is None else voxel_volume_ml
        source = source or (str(labels.path) if labels.path else "")
        space = Space.of(labels) if space is None else space
        labels = labels.data
    space = Space() if space is None else space
    if voxel_volume_ml is None:
        raise ValueError("volume_stats needs voxel_volume_ml for a bare array")
    per = label_volumes(labels, voxel_volume_ml)
    icv_ml = sum(per[k]["ml"] for k in TISSUE_KEYS)
    classes = {}
    for tc in tissue_classes():
        row = per[tc.key]
        classes[tc.key] = {"value": tc.value, "name": tc.name, "voxels": row["voxels"],
                           "volume_ml": row["ml"], "icv_fraction": row["icv_fraction"]}
    return {
        "file": source,
        "voxel_volume_ml": voxel_volume_ml,
        "classes": classes,
        "volumes_ml": {k: v["volume_ml"] for k, v in classes.items()},
        "voxels": {k: v["voxels"] for k, v in classes.items()},
        "icv_fraction": {k: v["icv_fraction"] for k, v in classes.items() if k != "background"},
        "icv_ml": icv_ml,
        "space": space.name,
        "space_reason": space.reason,
        "volume_unit": space.unit,
        "asf": space.asf,
        "native_volumes_ml": ({k: space.native_ml(v["volume_ml"]) for k, v in classes.items()}
                              if space.native_known else None),
        "native_icv_ml": space.native_ml(icv_ml),
        "etiv_oasis_ml": space.etiv_ml,
    }


def stats_csv_text(stats: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # Native volumes keep the five columns they always had. Atlas-space ones add `unit` (atlas-space
    # mL: what volume_ml is in) and `native_volume_ml` (atlas mL / ASF; empty without an ASF), and
    # with an ASF a last row with OASIS's eTIV.
    atlas = stats.get("space") == "atlas"
    extra = (lambda *v: list(v)) if atlas else (lambda *v: [])
    unit = stats.get("volume_unit", "mL")
    native = stats.get("native_volumes_ml") or {}
    w.writerow(["class", "name", "voxels", "volume_ml", "icv_fraction"] + extra("unit", "native_volume_ml"))
    for key, row in stats["classes"].items():
        frac = "" if row["icv_fraction"] is None else f"{row['icv_fraction']:.6f}"
        w.writerow([key, row["name"], row["voxels"], f"{row['volume_ml']:.4f}", frac] + extra(unit, _ml(native.get(key))))
    w.writerow(["icv", "Intracranial (CSF+GM+WM)", sum(stats["voxels"][k] for k in TISSUE_KEYS),
                f"{stats['icv_ml']:.4f}", "1.000000"] + extra(unit, _ml(stats.get("native_icv_ml"))))
    if atlas and stats.get("etiv_oasis_ml") is not None:
        w.writerow(["etiv_oasis", ETIV_LABEL, "", "", "", "mL", _ml(stats["etiv_oasis_ml"])])
    return buf.getvalue()


def _ml(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_stats_csv(path: str | os.PathLike, stats: dict) -> None:
    text = stats_csv_text(stats)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_stats_json(path: str | os.PathLike, stats: dict) -> None:
    text = json.dumps(stats, indent=2)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
