"""A scan as it comes off the scanner, ready for the tissue networks: find the brain when the skull
is on, then segment inside it. One place for the CLI, batch and the GUI's engine thread.

`--strip` (and the GUI's preference) is one of:
- "auto" (default): extract the brain when the scan looks like a head with its skull on
  (engine.infer.qc.skull_present) and is not already skull-stripped (a black border around a
  brain-sized foreground, engine.infer.inference.skull_stripped); a skull-stripped scan costs only
  those two checks and never loads the extractor;
- "on": always extract (e.g. a head cropped so tight that the skull check misses it);
- "off": never (the scan is segmented as it is, as before).

With a mask, the tissue networks see the scan with everything outside the mask set to 0, which is
exactly a skull-stripped scan: FSL_SEG's meaning follows (every voxel inside is CSF, grey or white
matter; outside is background), and the scan's grid and affine are kept.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

STRIP_MODES = ("auto", "on", "off")
_extractor = None


@dataclass
class StripDecision:
    mode: str
    run: bool
    reason: str


def decide_strip(data: np.ndarray, affine: np.ndarray, mode: str = "auto") -> StripDecision:
    from engine.infer.inference import skull_stripped
    from engine.infer.qc import skull_present

    if mode not in STRIP_MODES:
        raise ValueError(f"unknown strip mode {mode!r}; choose one of: {', '.join(STRIP_MODES)}")
    if mode == "off":
        return StripDecision(mode, False, "brain extraction off")
    if mode == "on":
        return StripDecision(mode, True, "brain extraction on")
    voxel_ml = float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    if skull_stripped(data, voxel_ml):
        return StripDecision(mode, False, "already skull-stripped: left as it is")
    if skull_present(data, voxel_ml, affine):
        return StripDecision(mode, True, "skull found: brain extracted")
    return StripDecision(mode, False, "no skull found: segmented as it is")


def get_extractor(model_dir=None):
    """The brain extractor, loaded on first use and kept (call from the MXNet thread only)."""
    global _extractor
    from engine.infer.strip import BrainExtractor

    if _extractor is None or (model_dir is not None and str(_extractor.model_dir) != str(model_dir)):
        _extractor = BrainExtractor(model_dir)
    return _extractor


def masked_scan(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The scan with everything outside `mask` set to 0, and every voxel inside kept above 0 (so
    that 'nonzero' and 'inside the mask' are the same set, as in a skull-stripped scan)."""
    data = np.asarray(data, dtype=np.float32)
    inside = np.maximum(data, 0)
    floor = np.float32(1e-3 * max(float(inside[mask].max()) if mask.any() else 1.0, 1e-6))
    return np.where(mask, np.maximum(inside, floor), np.float32(0)).astype(np.float32)


def extract(data, affine, mode="auto", progress=None, cancel=None, model_dir=None, decision=None):
    """(decision, StripResult or None). `decision`: decide_strip's, when the caller made it already."""
    decision = decision or decide_strip(data, affine, mode)
    if not decision.run:
        return decision, None
    res = get_extractor(model_dir).extract(data, np.asarray(affine, float), progress=progress, cancel=cancel)
    return decision, res


def segment_scan(segmenter, data, affine, config=None, strip: str = "auto", progress=None, cancel=None,
                 mask: np.ndarray | None = None, decision: StripDecision | None = None):
    """(SegmentResult, StripDecision, StripResult or None). `mask` (an intracranial mask the user
    already has, e.g. corrected in the GUI) is used as it is instead of extracting. `decision`:
    decide_strip(data, affine, strip), when the caller made it already."""
    if mask is not None:
        decision, res = StripDecision(strip, True, "the given brain mask"), None
        brain = np.asarray(mask, bool)
    else:
        decision, res = extract(data, affine, strip, cancel=cancel, decision=decision)
        brain = res.mask if res is not None else None
    if brain is not None:
        import dataclasses

        from engine.infer.inference import SegmentConfig

        vol = masked_scan(data, brain)
        config = dataclasses.replace(config or SegmentConfig(), masked=True)
    else:
        vol = data
    out = segmenter.segment(vol, config, progress=progress, cancel=cancel, affine=affine)
    return out, decision, res
