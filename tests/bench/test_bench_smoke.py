"""Every script under bench/ runs (issue #19): a refactor once broke bench/slice_click_bench.py
without a test noticing. Each benchmark runs here with --smoke - its own code path end to end on
tiny data (bench/common.py), one repeat, scratch output in tmp_path - in a fresh process, as it is
run by hand. A new script under bench/ must be added to SCRIPTS (the last test says so)."""
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
HELPERS = {"__init__", "common"}  # modules under bench/ that are not benchmarks
SCRIPTS = ["batch_bench", "candidate_eval", "csf_calibration", "fine_grid_eval", "finetune_gui_bench", "finetune_shift", "gui_bench", "int8_eval", "n4_eval",
           "proxy_eval", "secondary_eval", "slice_click_bench", "strip_eval", "strip_unsure", "val21_eval"]
TIMEOUT_S = 240


def _guarded_files() -> dict[str, str]:
    """The shipped models' records, which a smoke run must never write (bench/int8_eval.py records
    into model.json when run for real)."""
    return {str(f.relative_to(ROOT)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted((ROOT / "resources" / "weights").rglob("*.json"))}


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_runs_in_smoke_mode(name, tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE",
               BRAINSEG_HOME=str(tmp_path / "home"), BRAINSEG_BENCH_SCRATCH=str(tmp_path / "scratch"),
               TMPDIR=str(tmp_path), BRAINSEG_BENCHMARKS_MD=str(tmp_path / "BENCHMARKS.md"))
    before = _guarded_files()
    # its own process group: a timeout ends the script's children too (brainseg subprocesses)
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}", "--smoke"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"bench/{name}.py --smoke ran over {TIMEOUT_S} s; its output ended:\n{out[-4000:]}")
    assert proc.returncode == 0, f"bench/{name}.py --smoke exited {proc.returncode}; its output ended:\n{out[-4000:]}"
    after = _guarded_files()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"bench/{name}.py --smoke wrote into the shipped models: {changed}"
    # bench.common.report() appends there (not to docs/BENCHMARKS.md) in this test: never in smoke mode
    assert not (tmp_path / "BENCHMARKS.md").exists(), f"bench/{name}.py --smoke appended its results"


def test_every_bench_script_has_a_smoke_test():
    found = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in HELPERS)
    assert found == sorted(SCRIPTS), ("add each new script under bench/ to SCRIPTS (with a --smoke mode: see "
                                      f"bench/common.py); missing: {sorted(set(found) - set(SCRIPTS))}, "
                                      f"gone: {sorted(set(SCRIPTS) - set(found))}")
