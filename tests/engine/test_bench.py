"""`brainseg bench` runs end to end (tiny settings) and reports what the issue asks for."""
import json

from engine.bench import count_flops, cpu_info
from engine.cli import main


def test_peak_estimate_is_explained():
    """The peak is cores x clock x FLOP per cycle, for the cores this process may use, and the
    explanation states those same numbers."""
    import os

    info = cpu_info(measure_clock=False)
    assert info["cores"] == len(os.sched_getaffinity(0))
    assert abs(info["peak_gflops"] - info["cores"] * info["mhz"] / 1000 * info["flop_per_cycle"]) < 1e-6
    assert info["flop_per_cycle"] in (16, 32, 64)
    assert f"{info['cores']} cores x {info['mhz'] / 1000:.3f} GHz x {info['flop_per_cycle']} FP32" in info["peak_how"]
    assert f"= {info['peak_gflops']:.0f} GFLOPS" in info["peak_how"]


def test_flop_count_of_seed_unet_matches_the_paper_sizing():
    from engine.core.mx_env import get_mx
    from engine.nets import get_model

    net = get_model("unet")
    net.initialize(get_mx().init.Xavier())
    assert 13.0e9 < count_flops(net) < 14.0e9  # 13.5 GFLOP per 176x208 slice


def test_bench_cli_small(tiny_model_dir, tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    vol = np.zeros((48, 56, 6), np.float32)
    vol[8:40, 8:48, 1:5] = 100
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "small.nii"))
    plot = tmp_path / "lat.png"
    rc = main(["bench", "--models", "enet", "--batch-sizes", "1,2", "--repeats", "1", "--no-onnx", "--json",
               "--plot", str(plot), "--weights", f"enet={tiny_model_dir}", "--scan", str(tmp_path / "small.nii")])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    run = res["runs"][0]
    assert set(run["latency"]) == {"1", "2"} and run["volume_s"] > 0 and run["peak_rss_mb"] > 0
    low = [r for r in res["runs"] if r["runtime"] == "lowmem"][0]
    assert low["volume_s"] > 0 and low["peak_rss_mb"] > 0
    assert run["flops_per_slice"] > 1e8 and res["machine"]["peak_gflops"] > 0
    assert plot.exists() and plot.stat().st_size > 1000
