"""Orientation from anatomy, for files that cannot say how they are stored.

Analyze 7.5 has a one-byte `orient` field (0 transverse, 1 coronal, 2 sagittal, 3-5 the same
flipped), but 0 also means "unset", and OASIS RAW scans are sagittal slices whose headers often say
nothing; a headerless `.img` and a NIfTI whose qform and sform codes are both 0 say nothing at all.
Segmenting such a scan lying on its side costs Dice silently, so the orientation is found from
the anatomy instead:

- a coarse copy of the scan (8 mm, block means) is turned by each of the 24 proper rotations of the
  axes (signed permutations with determinant +1) and scored by normalised cross-correlation with a
  template (ROBEX's reference head for a head with its skull, the ICBM152 brain for a skull-stripped
  scan; resources/templates, 4 mm), over translations of up to 48 mm (FFT);
- the best rotation is used when it scores clearly better than the assumption
  (`MIN_SCORE`, `MIN_MARGIN`); otherwise the assumption stands and is said to be one.

Left and right cannot be read from a near-symmetric brain: only proper rotations are tried, so the
convention's handedness (radiological LAS for Analyze) is kept, and the note says so. Where a real
affine exists (NIfTI with a non-zero code, DICOM) it is never overridden; `check_affine` only warns
when the anatomy contradicts it. numpy/scipy only; about 0.1-0.2 s for a 256^3 scan.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

SCORE_MM = 8.0
GRID = 32  # 32 x 8 mm = 256 mm
MAX_SHIFT = 6  # voxels of SCORE_MM
MIN_SCORE = 0.45  # correlation the best rotation needs to be believed
MIN_MARGIN = 0.08  # ... and by how much it must beat the assumed orientation

# Analyze 7.5 `orient` (data_history): where each array axis points. Readers disagree on the
# details; we read every code with the handedness of Analyze's default LAS (radiological), so that
# the anatomy check below, which keeps handedness, can correct any of them.
ANALYZE_ORIENT_CODES = {
    0: ("L", "A", "S"),  # transverse unflipped (also "unset")
    1: ("L", "S", "P"),  # coronal unflipped
    2: ("A", "S", "L"),  # sagittal unflipped
    3: ("L", "P", "I"),  # transverse flipped
    4: ("L", "I", "A"),  # coronal flipped
    5: ("A", "I", "R"),  # sagittal flipped
}
ANALYZE_ORIENT_NAMES = {0: "transverse", 1: "coronal", 2: "sagittal", 3: "transverse flipped",
                        4: "coronal flipped", 5: "sagittal flipped"}
_AXIS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


def affine_from_codes(codes, zooms, shape) -> np.ndarray:
    """An affine whose array axes point along `codes` (e.g. ("A", "S", "L")), centred on the volume."""
    aff = np.zeros((4, 4))
    aff[3, 3] = 1.0
    for i, c in enumerate(codes):
        w, s = _AXIS[c]
        aff[w, i] = s * float(zooms[i])
    centre = (np.array(shape[:3], float) - 1) / 2
    aff[:3, 3] = -aff[:3, :3] @ centre
    return aff


def proper_rotations() -> list[np.ndarray]:
    """The 24 signed permutation matrices with determinant +1 (identity first)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3), int)
            for r, (c, s) in enumerate(zip(perm, signs)):
                m[r, c] = s
            if round(np.linalg.det(m)) == 1:
                out.append(m)
    out.sort(key=lambda m: 0 if np.array_equal(m, np.eye(3, dtype=int)) else 1)
    return out


@lru_cache(maxsize=2)
def _template(kind: str) -> np.ndarray:
    from engine.core.paths import RESOURCES

    with np.load(RESOURCES / "templates" / "orient_templates.npz") as z:
        t = z[f"{kind}_4mm"].astype(np.float32)
    t = t.reshape(GRID, 2, GRID, 2, GRID, 2).mean((1, 3, 5))  # 4 -> 8 mm
    return t


def _block_mean(data: np.ndarray, zooms) -> tuple[np.ndarray, np.ndarray]:
    f = [max(1, int(round(SCORE_MM / float(z)))) for z in zooms]
    n = [s // k for s, k in zip(data.shape, f)]
    a = np.asarray(data[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]], dtype=np.float32)
    a = a.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean((1, 3, 5))
    return a, np.array(zooms, float) * f


def _ras_array(small: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The coarse array turned to RAS order (by the affine's nearest axes) and its voxel sizes."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    arr = nib.orientations.apply_orientation(small, ornt)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    return arr, zooms[np.argsort(ornt[:, 0])]


def _place(arr: np.ndarray, zooms) -> np.ndarray:
    """Resample to SCORE_MM voxels and centre the foreground box in a GRID^3 canvas."""
    z = np.asarray(zooms, float) / SCORE_MM
    a = arr if np.allclose(z, 1.0) else ndi.zoom(arr, z, order=1)
    fg = a > 0.1 * (a.max() if a.size else 1.0)
    canvas = np.zeros((GRID,) * 3, np.float32)
    if not fg.any():
        return canvas
    idx = np.argwhere(fg)
    lo, hi = idx.min(0), idx.max(0) + 1
    box = a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    start = [(GRID - min(s, GRID)) // 2 for s in box.shape]
    sl = tuple(slice(0, min(s, GRID)) for s in box.shape)
    box = box[sl]
    canvas[start[0]:start[0] + box.shape[0], start[1]:start[1] + box.shape[1], start[2]:start[2] + box.shape[2]] = box
    return canvas


def _zero_norm(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    n = float(np.sqrt((a * a).sum()))
    return a / n if n > 0 else a


FFT_SIZE = GRID + MAX_SHIFT + 2  # zero padding: shifts up to +-MAX_SHIFT never wrap


def _best_correlation(cand: np.ndarray, tpl_fft: np.ndarray) -> float:
    size = FFT_SIZE
    cf = np.fft.rfftn(_zero_norm(cand), (size,) * 3)
    cc = np.fft.irfftn(np.conj(cf) * tpl_fft, (size,) * 3)
    win = np.concatenate([np.arange(0, MAX_SHIFT + 1), np.arange(size - MAX_SHIFT, size)])
    return float(cc[np.ix_(win, win, win)].max())


@dataclass
class OrientationFinding:
    rotation: np.ndarray  # 3x3 proper signed permutation in world (RAS) coordinates
    score: float  # correlation of the best rotation
    assumed_score: float  # correlation of the orientation as assumed
    template: str  # "head" or "brain"
    before: str  # axis codes as assumed, e.g. "LAS"
    after: str  # axis codes found

    @property
    def changed(self) -> bool:
        return (not np.array_equal(self.rotation, np.eye(3, dtype=int))
                and self.score >= MIN_SCORE and self.score - self.assumed_score >= MIN_MARGIN)

    @property
    def confident(self) -> bool:
        return self.score >= MIN_SCORE

    def corrected_affine(self, affine: np.ndarray, shape) -> np.ndarray:
        """`affine` turned by the found rotation about the volume's centre."""
        if not self.changed:
            return np.asarray(affine, float)
        m = np.eye(4)
        m[:3, :3] = self.rotation
        c = affine[:3, :3] @ ((np.array(shape[:3], float) - 1) / 2) + affine[:3, 3]
        t1, t2 = np.eye(4), np.eye(4)
        t1[:3, 3] = -c
        t2[:3, 3] = c
        return t2 @ m @ t1 @ affine


# A skull-stripped adult brain (with its CSF) is about 1.1-1.9 L: the demo scan (ICBM152, masked)
# has 1.88 L of foreground. A head with skull and scalp is 3-4.5 L, and more than 2.3 L of it
# fits in even a tight field of view.
SKULL_ON_FOREGROUND_ML = 2300.0
STRIPPED_ZERO_FRACTION = 0.2
STRIPPED_MAX_ML = SKULL_ON_FOREGROUND_ML  # more than any brain with its CSF: a head with skull and scalp is 3-4.5 L


def skull_stripped(volume: np.ndarray, voxel_ml: float = 0.001) -> bool:
    """A skull-stripped scan: more than a fifth of its voxels (every 2nd along each axis) are
    exactly zero (the masked-out background) and the nonzero rest is no larger than a brain with
    its CSF (a zero-padded head with its skull, e.g. registered to MNI space, is 3-4.5 L). Then the
    nonzero voxels are the brain mask that FAST labels in full."""
    v = np.asarray(volume)[::2, ::2, ::2]
    nonzero = v != 0
    return bool(1.0 - nonzero.mean() > STRIPPED_ZERO_FRACTION
                and nonzero.sum() * 8 * voxel_ml <= STRIPPED_MAX_ML)


def find_orientation(data: np.ndarray, affine: np.ndarray, template: str | None = None) -> OrientationFinding:
    """Score the 24 proper rotations of `affine` against the anatomy of `data`."""
    import nibabel as nib

    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    if template is None:
        voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
        template = "brain" if skull_stripped(data, voxel_ml) else "head"
    small, szooms = _block_mean(np.asarray(data), zooms)
    small = np.clip(small, 0, np.percentile(small, 99.5) if small.size else 1)
    # one resampling to SCORE_MM voxels in the array's own order; each rotation is then an exact
    # permutation and flip of that array
    iso = ndi.zoom(small, szooms / SCORE_MM, order=1) if np.any(np.abs(szooms - SCORE_MM) > 0.01) else small
    iso_aff = affine.copy()
    iso_aff[:3, :3] = affine[:3, :3] / zooms * SCORE_MM
    tpl_fft = np.fft.rfftn(_zero_norm(_template(template)), (FFT_SIZE,) * 3)
    scores = []
    rots = proper_rotations()
    for m in rots:
        a = iso_aff.copy()
        a[:3, :3] = m @ iso_aff[:3, :3]
        arr, _ = _ras_array(iso, a)
        scores.append(_best_correlation(_place(arr, (SCORE_MM,) * 3), tpl_fft))
    best = int(np.argmax(scores))
    after = affine.copy()
    after[:3, :3] = rots[best] @ affine[:3, :3]
    res = OrientationFinding(rots[best], scores[best], scores[0], template,
                             "".join(nib.aff2axcodes(affine)), "".join(nib.aff2axcodes(after)))
    log.debug("orientation scores: best %s %.3f, assumed %s %.3f", res.after, res.score, res.before,
              res.assumed_score)
    return res


def describe(finding: OrientationFinding, what_was_assumed: str) -> str:
    """The note shown in info, the log, the status bar and batch's QC column."""
    if finding.changed:
        return (f"orientation found from the anatomy: stored {finding.after}, not {finding.before} as "
                f"{what_was_assumed} implied; left-right kept as the convention's (a brain is too symmetric "
                "to tell)")
    if finding.confident:
        return (f"orientation {finding.before} ({what_was_assumed}) agrees with the anatomy; left-right is "
                "the convention's")
    return (f"orientation {finding.before} assumed ({what_was_assumed}); the anatomy could not confirm it "
            f"(match {finding.score:.2f})")


def check_affine(data: np.ndarray, affine: np.ndarray) -> str | None:
    """A warning when a real affine (NIfTI code > 0, DICOM) contradicts the anatomy; it is kept."""
    f = find_orientation(data, affine)
    if f.changed and f.score - f.assumed_score >= 2 * MIN_MARGIN:
        return (f"the header says the scan is stored {f.before}, but its anatomy looks like {f.after} "
                f"(match {f.score:.2f} vs {f.assumed_score:.2f}); the header was kept - check it")
    return None


_PAIRS = (("L", "R"), ("A", "P"), ("S", "I"))


def check_codes(codes) -> str:
    """`codes` as a 3-letter string ("ASL"), or ValueError saying what is wrong: each of L/R, A/P
    and S/I must be named exactly once (one letter of each pair)."""
    letters = "".join(str(c) for c in codes).upper()
    if len(letters) != 3 or any(c not in _AXIS for c in letters):
        raise ValueError(f"axis codes must be 3 letters from R, L, A, P, S, I (e.g. LAS), not {letters!r}")
    used = [sum(c in pair for c in letters) for pair in _PAIRS]
    if used != [1, 1, 1]:
        twice = [f"{a}/{b}" for (a, b), n in zip(_PAIRS, used) if n > 1]
        never = [f"{a}/{b}" for (a, b), n in zip(_PAIRS, used) if n == 0]
        raise ValueError(f"axis codes {letters} name {' and '.join(twice)} more than once and "
                         f"{' and '.join(never)} not at all: each of L/R, A/P and S/I must be used once")
    return letters


def reoriented_affine(affine: np.ndarray, shape, codes) -> np.ndarray:
    """The affine with its array axes pointing along `codes` (e.g. "ASL": i towards anterior, j
    superior, k left): only the header's directions change, never the voxels. Each axis keeps its
    voxel size and the volume's centre stays at the same world point; the affine is turned (or
    mirrored, when the handedness changes) by the signed permutation of world axes that takes its
    present nearest axes to the chosen ones, so a slightly oblique scan keeps its tilt and the
    present codes give back `affine` itself. ValueError when the codes are not one of each of
    L/R, A/P and S/I."""
    import nibabel as nib

    letters = check_codes(codes)
    affine = np.asarray(affine, float)
    ornt = nib.orientations.io_orientation(affine)
    if not np.all(np.isfinite(ornt)):
        raise ValueError("the affine has a degenerate axis (zero voxel size): it has no orientation to change")
    turn = np.zeros((3, 3))
    for (w_now, s_now), letter in zip(ornt, letters):
        w_new, s_new = _AXIS[letter]
        turn[w_new, int(w_now)] = s_new * s_now  # world axis w_now (sign s_now) -> w_new (sign s_new)
    centre = affine[:3, :3] @ ((np.array(shape[:3], float) - 1) / 2) + affine[:3, 3]
    out = np.eye(4)
    out[:3, :3] = turn @ affine[:3, :3]
    out[:3, 3] = centre - out[:3, :3] @ ((np.array(shape[:3], float) - 1) / 2)
    return out
