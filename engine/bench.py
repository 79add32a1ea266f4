"""`brainseg bench`: the seed's latency study, measured properly.

For each model (U-Net, ENet) and runtime (MXNet, and ONNX Runtime on the same weights when the
export works): forward latency per batch size (median and interquartile range over repeats,
after warm-up), whole-volume segment time on the demo scan, slices per second, peak memory
(RSS), parameters and FLOPs per slice, and achieved GFLOPS as a fraction of the machine's FP32
peak (estimated from cores x clock x FLOPs per cycle, printed with its derivation). Each model
and runtime runs in its own child process, so peak RSS and thread settings are its own.

    brainseg bench [--models unet,enet] [--batch-sizes 1,8,16,32,64] [--repeats 5] [--json]
                   [--plot docs/bench_latency.png] [--append docs/BENCHMARKS.md] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from engine.core.hardware import cpu_cores

SLICE_SHAPE = (176, 208)


# ----------------------------------------------------------------------------- machine
def cpu_info(measure_clock: bool = True) -> dict:
    name, mhz, flags, vendor = platform.processor() or "unknown", 0.0, set(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "model name" and name in ("unknown", "", platform.processor()):
                    name = val
                elif key == "cpu MHz" and not mhz:
                    mhz = float(val)
                elif key == "flags" and not flags:
                    flags = set(val.split())
                elif key == "vendor_id":
                    vendor = val
    except OSError:
        pass
    cores = cpu_cores()
    if "avx512f" in flags:
        # Intel server cores have two 512-bit FMA units (64 FP32 FLOP/cycle); AMD Zen 4 executes
        # AVX-512 on two 256-bit FMA pipes (32 FP32 FLOP/cycle).
        per_cycle, why = (32, "AVX-512 on AMD Zen 4: 2 x 256-bit FMA pipes = 2 x 8 lanes x 2")\
            if "AMD" in vendor else (64, "AVX-512: 2 x 512-bit FMA units = 2 x 16 lanes x 2")
    elif "avx2" in flags and "fma" in flags:
        per_cycle, why = 32, "AVX2 + FMA: 2 x 256-bit FMA units = 2 x 8 lanes x 2"
    elif "avx" in flags:
        per_cycle, why = 16, "AVX without FMA: 8-lane add + 8-lane multiply"
    else:
        per_cycle, why = 8, "SSE: 4-lane add + 4-lane multiply"
    nominal_mhz = mhz
    measured = measure_clock_mhz(cores) if measure_clock else None  # ~1 s: only for the peak estimate
    clock_how = "the nominal clock (/proc/cpuinfo)"
    if measured and measured > mhz:
        # /proc/cpuinfo shows the nominal clock in a VM; the cores boost above it under load
        mhz, clock_how = measured, (f"the clock measured under load on all {cores} cores (a chain of "
                                    f"dependent integer adds, 1 per cycle; nominal {nominal_mhz / 1000:.3f} GHz)")
    peak = cores * mhz / 1000.0 * per_cycle
    return {"cpu": name, "vendor": vendor, "cores": cores, "mhz": mhz, "nominal_mhz": nominal_mhz,
            "flop_per_cycle": per_cycle, "peak_gflops": peak,
            "peak_how": f"{cores} cores x {mhz / 1000:.3f} GHz x {per_cycle} FP32 FLOP/cycle ({why}) = "
                        f"{peak:.0f} GFLOPS, at {clock_how}"}


_CLOCK_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    const long n = 400000000L;
    long x = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)  /* 8 dependent adds: 8 cycles; the loop overhead runs beside them */
        __asm__ volatile("add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\t"
                         "add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0" : "+r"(x));
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    printf("%.1f\n", 8.0 * n / s / 1e6);
    return x == 0;
}
"""


def measure_clock_mhz(cores: int) -> float | None:
    """The clock the cores run at under load, in MHz: one copy of a dependent-add loop per core,
    compiled with the system's C compiler (x86-64 only). None when that is not possible."""
    import shutil
    import tempfile

    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc or platform.machine() not in ("x86_64", "AMD64"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(_CLOCK_C)
        try:
            subprocess.run([cc, "-O1", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=60)
            procs = [subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True) for _ in range(cores)]
            vals = [float(p.communicate(timeout=120)[0]) for p in procs]
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
    return float(np.median(vals))


def count_flops(net, shape=SLICE_SHAPE) -> int:
    """Multiply-adds x 2 of every (transposed) convolution for one (1, 1, H, W) slice."""
    from engine.core.mx_env import get_mx

    mx = get_mx()
    nn = mx.gluon.nn
    total = [0]
    hooks = []

    def conv_hook(block, inputs, output):
        w = block.weight.shape  # Conv2D: (out, in/groups, kh, kw); Conv2DTranspose: (in, out, kh, kw)
        if isinstance(block, nn.Conv2DTranspose):
            n, c, h, wd = inputs[0].shape
            total[0] += 2 * n * h * wd * w[0] * w[1] * w[2] * w[3]
        else:
            n, c, h, wd = output.shape
            total[0] += 2 * n * h * wd * w[0] * w[1] * w[2] * w[3]

    def walk(b):
        if isinstance(b, (nn.Conv2D, nn.Conv2DTranspose)):
            hooks.append(b.register_forward_hook(conv_hook))
        for c in b._children.values():
            walk(c)

    net.hybridize(active=False)
    walk(net)
    net(mx.nd.zeros((1, 1) + tuple(shape)))
    for h in hooks:
        h.detach()
    return int(total[0])


# ----------------------------------------------------------------------------- worker
def _worker(model: str, runtime: str, batch_sizes: list[int], repeats: int, model_dir: str | None,
            scan_path: str | None = None) -> dict:
    from engine.core.mx_env import configure_threads

    configure_threads()
    from engine.core.paths import DEMO_SCAN
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.io.volume import read_volume
    from engine.nets.weights import shipped_model_dir

    mdir = Path(model_dir) if model_dir else shipped_model_dir(model)
    if runtime == "lowmem":
        # Low-memory mode: a fresh process segments the volume streaming one slice at a time.
        scan = read_volume(scan_path or DEMO_SCAN).data
        seg = Segmenter(mdir, hybridize=False)
        t = time.perf_counter()
        r = seg.segment(scan, SegmentConfig(batch_size=1))
        return {"model": model, "runtime": runtime, "params": seg.parameter_count,
                "volume_s": time.perf_counter() - t, "volume_slices_run": r.slices_run,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "latency": {}}
    seg = Segmenter(mdir)
    res = {"model": model, "runtime": runtime, "params": seg.parameter_count}
    rng = np.random.default_rng(0)
    scan = read_volume(scan_path or DEMO_SCAN).data
    if runtime == "mxnet":
        from engine.core.mx_env import get_mx

        mx = get_mx()

        def run(x):
            seg.net(mx.nd.array(x)).wait_to_read()
    else:
        import onnxruntime as ort

        from engine.package import export_package

        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"brainseg-bench-{model}-{os.getpid()}"
        export_package(mdir, tmp, fmt="onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        sess = ort.InferenceSession(str(next(tmp.glob("*.onnx"))), opts, providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name

        def run(x):
            sess.run(None, {in_name: x})
    lat = {}
    for bs in batch_sizes:
        x = rng.random((bs, 1) + SLICE_SHAPE).astype(np.float32)
        run(x)  # warm-up (allocations, oneDNN primitive creation)
        run(x)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            run(x)
            ts.append(time.perf_counter() - t)
        lat[bs] = {"median_s": float(np.median(ts)), "q1_s": float(np.percentile(ts, 25)),
                   "q3_s": float(np.percentile(ts, 75)), "min_s": float(min(ts))}
    res["latency"] = lat
    if runtime == "mxnet":
        seg.segment(scan, SegmentConfig())  # warm-up at the volume's shapes and batch size
        vt = []
        for _ in range(max(2, repeats // 2)):
            r = seg.segment(scan, SegmentConfig())
            vt.append(r.seconds)
        res["volume_s"] = float(np.median(vt))
        res["volume_slices_run"] = r.slices_run
        t = time.perf_counter()
        seg.segment(scan, SegmentConfig(crop_to_foreground=False))
        res["volume_uncropped_s"] = time.perf_counter() - t
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return res


def _flops_for(model: str, model_dir: str | None) -> int:
    from engine.infer.inference import load_network
    from engine.nets.weights import shipped_model_dir

    net, _ = load_network(Path(model_dir) if model_dir else shipped_model_dir(model))
    return count_flops(net)


# ----------------------------------------------------------------------------- driver
def run_bench(models: list[str], batch_sizes: list[int], repeats: int, threads: int | None,
              onnx: bool = True, model_dirs: dict | None = None, scan: str | None = None) -> dict:
    info = cpu_info()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("OMP_NUM_THREADS", str(info["cores"]))
    results = {"scan": scan, "machine": info, "date": time.strftime("%Y-%m-%d %H:%M"), "omp_threads": env["OMP_NUM_THREADS"],
               "runs": []}
    for model in models:
        mdir = (model_dirs or {}).get(model)
        flops = None
        for runtime in (("mxnet", "onnxruntime", "lowmem") if onnx else ("mxnet", "lowmem")):
            cmd = [sys.executable, "-m", "engine.bench", "--_worker", model, "--_runtime", runtime,
                   "--batch-sizes", ",".join(map(str, batch_sizes)), "--repeats", str(repeats)]
            if mdir:
                cmd += ["--_model-dir", str(mdir)]
            if scan:
                cmd += ["--scan", str(scan)]
            if runtime == "mxnet":
                cmd += ["--_flops"]
            print(f"  running {model} on {runtime}...", file=sys.stderr, flush=True)
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
            if p.returncode != 0:
                err = (p.stderr.strip().splitlines() or ["?"])[-1]
                results["runs"].append({"model": model, "runtime": runtime, "error": err})
                print(f"  {model}/{runtime} failed: {err}", file=sys.stderr)
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            flops = r.pop("flops", flops)
            r["flops_per_slice"] = flops
            results["runs"].append(r)
    for r in results["runs"]:
        if "latency" in r and r.get("flops_per_slice"):
            for bs, v in r["latency"].items():
                g = r["flops_per_slice"] * int(bs) / v["median_s"] / 1e9
                v["gflops"] = g
                v["peak_fraction"] = g / info["peak_gflops"] if info["peak_gflops"] else None
    return results


def format_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"### brainseg bench - {res['date']} - {m['cpu']}, {m['cores']} cores, OMP_NUM_THREADS={res['omp_threads']}",
             "", f"FP32 peak estimate: {m['peak_how']}.", ""]
    runs = {(r["model"], r["runtime"]): r for r in res["runs"]}
    lines.append("| model | runtime | params | GFLOP/slice | batch | median ms (IQR) | ms/slice | slices/s | GFLOPS | % of peak | MXNet/ORT |")
    lines.append("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for (model, runtime), r in runs.items():
        if runtime == "lowmem":
            continue
        if "error" in r:
            lines.append(f"| {model} | {runtime} | | | | failed: {r['error']} | | | | | |")
            continue
        flops = r.get("flops_per_slice") or runs.get((model, "mxnet"), {}).get("flops_per_slice")
        for bs, v in r["latency"].items():
            ratio = ""
            other = runs.get((model, "onnxruntime"))
            if runtime == "mxnet" and other and "latency" in other and bs in other["latency"]:
                ratio = f"{v['median_s'] / other['latency'][bs]['median_s']:.2f}"
            g = flops * int(bs) / v["median_s"] / 1e9 if flops else None
            frac = f"{100 * g / m['peak_gflops']:.0f}" if g and m["peak_gflops"] else ""
            lines.append(
                f"| {model} | {runtime} | {r['params'] / 1e6:.2f} M | {flops / 1e9 if flops else 0:.2f} | {bs} | "
                f"{1000 * v['median_s']:.1f} ({1000 * v['q1_s']:.1f}-{1000 * v['q3_s']:.1f}) | "
                f"{1000 * v['median_s'] / int(bs):.1f} | {int(bs) / v['median_s']:.1f} | "
                f"{g or 0:.1f} | {frac} | {ratio} |")
    lines.append("")
    lines.append(f"| model | whole volume ({res.get('scan') or 'demo scan, 176 axial slices'}, cropped to the head) | slices run | uncropped | peak RSS |")
    lines.append("|---|---:|---:|---:|---:|")
    for (model, runtime), r in runs.items():
        if runtime == "mxnet" and "volume_s" in r:
            lines.append(f"| {model} | {r['volume_s']:.2f} s | {r['volume_slices_run']} | "
                         f"{r['volume_uncropped_s']:.2f} s | {r['peak_rss_mb']:.0f} MB |")
    for (model, runtime), r in runs.items():
        if runtime == "lowmem" and "volume_s" in r:
            lines.append(f"| {model}, low-memory mode (batch 1, streaming, no static allocation) | "
                         f"{r['volume_s']:.2f} s | {r['volume_slices_run']} | | {r['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


def save_plot(res: dict, path: str | os.PathLike) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    styles = {"mxnet": "-", "onnxruntime": "--"}
    colors = {"unet": "#D55E00", "enet": "#0072B2"}
    for r in res["runs"]:
        if not r.get("latency"):
            continue
        bss = sorted(int(b) for b in r["latency"])
        ms = [1000 * r["latency"][str(b) if str(b) in r["latency"] else b]["median_s"] / b for b in bss]
        ax.plot(bss, ms, styles[r["runtime"]], marker="o", color=colors.get(r["model"], "k"),
                label=f"{r['model']} / {r['runtime']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (slices of 176x208)")
    ax.set_ylabel("ms per slice")
    ax.set_title(f"Forward latency per slice - {res['machine']['cores']} cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def cmd_bench(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bss = [int(b) for b in args.batch_sizes.split(",")]
    dirs = dict(w.split("=", 1) for w in (args.weights or []))
    res = run_bench(models, bss, args.repeats, args.threads, onnx=not args.no_onnx, model_dirs=dirs,
                    scan=args.scan)
    if args.json:
        print(json.dumps(res))
    else:
        print(format_table(res))
    if args.plot and save_plot(res, args.plot):
        print(f"plot: {args.plot}", file=sys.stderr)
    if args.append:
        with open(args.append, "a", encoding="utf-8") as fh:
            fh.write("\n" + format_table(res))
            if args.plot:
                fh.write(f"\n![latency per slice]({Path(args.plot).name})\n")
    return 0


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency, throughput, memory and efficiency of both networks")
    _bench_args(p)
    p.set_defaults(func=cmd_bench)


def _bench_args(p) -> None:
    p.add_argument("--models", default="unet,enet")
    p.add_argument("--batch-sizes", default="1,8,16,32,64")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs (default: all cores)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime comparison")
    p.add_argument("--weights", action="append", metavar="MODEL=DIR",
                   help="bench this model directory instead of the shipped one (repeatable)")
    p.add_argument("--scan", default=None, help="volume for the whole-volume timing (default: the demo scan)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", default=None, help="also save a latency plot (PNG) here, e.g. docs/bench_latency.png")
    p.add_argument("--append", default=None, help="append the table to this Markdown file")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.bench")
    _bench_args(ap)
    ap.add_argument("--_worker")
    ap.add_argument("--_runtime", default="mxnet")
    ap.add_argument("--_model-dir", dest="_model_dir")
    ap.add_argument("--_flops", action="store_true")
    args = ap.parse_args(argv)
    if args._worker:
        bss = [int(b) for b in args.batch_sizes.split(",")]
        r = _worker(args._worker, args._runtime, bss, args.repeats, args._model_dir, args.scan)
        if args._flops:
            r["flops"] = _flops_for(args._worker, args._model_dir)
        r["latency"] = {str(k): v for k, v in r["latency"].items()}
        print(json.dumps(r))
        return 0
    return cmd_bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
