"""The classical peer for our accuracy and speed figures: ANTs Atropos, 3 classes.

Runs in its own virtual environment (antspyx needs a newer numpy than MXNet 1.9.1 allows):

    make ants    # python3.11 -m venv .venv-ants && .venv-ants/bin/pip install antspyx
    .venv-ants/bin/python tools/atropos_peer.py SCAN.nii.gz -o atropos.nii.gz

Exactly the call the issue tracker fixed for comparisons: k-means initialisation, MRF 0.2 over the
1-voxel neighbourhood, 5 iterations, mask = scan > 0. Atropos numbers its classes by ascending mean
intensity, which on a T1 is CSF (1), grey (2), white matter (3): FSL_SEG's values.
"""
import argparse
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scan")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    t0 = time.time()
    import ants

    img = ants.image_read(args.scan)
    mask = ants.get_mask(img, low_thresh=1e-9, high_thresh=float(img.max()) + 1, cleanup=0)
    res = ants.atropos(a=img, x=mask, i="kmeans[3]", m="[0.2,1x1x1]", c="[5,0]")
    ants.image_write(res["segmentation"], args.output)
    print(f"atropos: {time.time() - t0:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
