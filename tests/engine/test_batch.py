"""`brainseg batch`: finding scans (files, globs, BIDS, OASIS-1, DICOM), one table with volumes and
QC flags that match `brainseg stats` on each mask, a broken scan as a row, resume, Ctrl+C and a
torn last row, --jobs 2, and a Dask cluster that loses a worker mid-run."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine import batch
from engine.cli import main
from tests.dicom_util import write_series
from tests.phantoms import write_scan as _scan


def _cohort(root: Path) -> list[str]:
    """A BIDS dataset of 2 subjects (one with a session), a folder of plain files with a label map
    next to a scan, and a broken file."""
    _scan(root / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz", 1)
    _scan(root / "bids" / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz", 2)
    (root / "bids" / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')
    _scan(root / "plain" / "a.nii.gz", 3)
    _scan(root / "plain" / "a_seg.nii.gz", 4)  # a label map: not a scan
    (root / "plain" / "broken.nii").write_bytes(b"not a nifti file at all" * 10)
    return [str(root / "bids"), str(root / "plain")]


def test_discover_finds_bids_oasis_dicom_and_globs(tmp_path):
    ins = _cohort(tmp_path)
    o = tmp_path / "oasis" / "OAS1_0042_MR1" / "PROCESSED" / "MPRAGE" / "T88_111"
    _scan(o / "OAS1_0042_MR1_mpr_n4_anon_111_t88_masked_gfc.nii.gz", 5)  # renamed below to .hdr pattern
    nib.save(nib.AnalyzeImage(np.zeros((8, 8, 8), np.int16), np.eye(4)),
             str(o / "OAS1_0042_MR1_mpr_n4_anon_111_t88_masked_gfc.hdr"))
    write_series(tmp_path / "dicom" / "series1", np.zeros((8, 8, 4), np.float32) + 100, np.eye(4))
    items = batch.discover(ins + [str(tmp_path / "oasis"), str(tmp_path / "dicom" / "series1"),
                                  str(tmp_path / "plain" / "*.nii.gz")])
    keys = {i.key: i for i in items}
    assert keys["sub-01_T1w"].subject == "sub-01" and keys["sub-02_ses-1_T1w"].session == "ses-1"
    assert keys["OAS1_0042_MR1"].subject == "OAS1_0042" and keys["OAS1_0042_MR1"].session == "MR1"
    assert keys["dicom__series1"].subject == "dicom" and "a" in keys and "broken" in keys
    assert not any("seg" in k for k in keys), "label maps are not scans"
    assert len(items) == len({(str(Path(i.path).resolve()), i.series) for i in items}), "each scan once"
    with pytest.raises(batch.BatchError, match="matches no file"):
        batch.discover([str(tmp_path / "nothing*.nii")])


def test_batch_table_matches_stats_with_a_broken_scan_resume_and_report(tmp_path, tiny_model_dir, capsys):
    ins = _cohort(tmp_path)
    out = tmp_path / "out"
    assert main(["batch", *ins, "-o", str(out), "--weights", str(tiny_model_dir)]) == 3  # one failed
    text = capsys.readouterr()
    assert "about" in text.err and "left" in text.err, "progress with time left"
    rows = list(csv.DictReader(open(out / "volumes.csv")))
    assert len(rows) == 4
    bad = [r for r in rows if r["status"] != "ok"]
    assert len(bad) == 1 and bad[0]["scan"] == "broken" and "broken.nii" in bad[0]["error"]
    for r in rows:
        if r["status"] != "ok":
            continue
        assert main(["stats", str(out / r["mask"]), "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        for k in ("csf", "gm", "wm"):
            assert abs(float(r[f"{k}_ml"]) - st["volumes_ml"][k]) < 1e-3
        assert abs(float(r["tiv_ml"]) - sum(st["volumes_ml"][k] for k in ("csf", "gm", "wm"))) < 1e-2
        assert r["model"] == "enet" and (out / "thumbs" / f"{r['scan']}.png").exists()
        assert "TIV" in r["qc_flags"], "a 30 mL phantom is flagged as implausible"
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and page.count("data:image/png;base64,") == 3
    assert "1 failed, 3 flagged" in page
    # a re-run without --resume refuses; with it does no work twice
    assert main(["batch", *ins, "-o", str(out), "--weights", str(tiny_model_dir)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["batch", *ins, "-o", str(out), "--weights", str(tiny_model_dir), "--resume"]) == 3
    assert "0 scans processed now; 4 rows" in capsys.readouterr().out


def test_ctrl_c_leaves_whole_rows_and_resume_finishes(tmp_path, tiny_model_dir, monkeypatch, capsys):
    ins = _cohort(tmp_path)
    out = tmp_path / "out"
    real = batch.process_scan
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(batch, "process_scan", interrupted)
    assert main(["batch", *ins, "-o", str(out), "--weights", str(tiny_model_dir)]) == 130
    assert "--resume" in capsys.readouterr().err
    lines = (out / "volumes.csv").read_text().splitlines()
    assert len(lines) == 3 and all(len(next(csv.reader([ln]))) == len(batch.COLUMNS) for ln in lines)
    # a torn row (killed in the middle of its write) is cut off, then the batch finishes
    with open(out / "volumes.csv", "a") as f:
        f.write("sub-9,,half a row")
    monkeypatch.setattr(batch, "process_scan", real)
    assert main(["batch", *ins, "-o", str(out), "--weights", str(tiny_model_dir), "--resume"]) == 3
    rows = list(csv.DictReader(open(out / "volumes.csv")))
    assert len(rows) == 4 and len({r["scan"] for r in rows}) == 4


def test_jobs_2_gives_the_same_table(tmp_path, tiny_model_dir):
    ins = _cohort(tmp_path)
    items = batch.discover(ins)
    rows, n = batch.run(items, tmp_path / "out", tiny_model_dir, jobs=2)
    assert n == 4 and sorted(r["scan"] for r in rows) == sorted(i.key for i in items)
    one, _ = batch.run(items, tmp_path / "out1", tiny_model_dir, jobs=1)
    by = {r["scan"]: r for r in one}
    for r in rows:
        if r["status"] == "ok":
            assert r["gm_ml"] == by[r["scan"]]["gm_ml"], "the same masks from worker processes"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_dask_cluster_with_a_killed_worker_completes_the_table(tmp_path, tiny_model_dir):
    """A scheduler and two workers as separate processes on 127.0.0.1; one worker is killed with
    SIGKILL once the first row is in: its scans are retried on the other, the table is whole."""
    for i in range(6):
        _scan(tmp_path / "scans" / f"s{i}.nii.gz", i)
    items = batch.discover([str(tmp_path / "scans")])
    port = _free_port()
    bindir = Path(sys.executable).parent
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(3)
        for _ in range(2):
            procs.append(subprocess.Popen(
                [str(bindir / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--nworkers", "1", "--nthreads", "1",
                 "--no-dashboard", "--no-nanny"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        killed = []

        def kill_one(row):
            if not killed:
                procs[1].send_signal(signal.SIGKILL)
                killed.append(row["scan"])

        rows, n = batch.run(items, tmp_path / "out", tiny_model_dir, scheduler=f"tcp://127.0.0.1:{port}",
                            on_row=kill_one)
        assert killed and procs[1].wait(10) == -signal.SIGKILL
        assert sorted(r["scan"] for r in rows) == sorted(i.key for i in items)
        assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
        assert all((tmp_path / "out" / r["mask"]).exists() for r in rows)
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def test_weights_takes_a_train_folder_a_version_name_or_a_model_folder(tmp_path, tiny_model_dir, capsys,
                                                                       monkeypatch):
    import shutil

    from engine.store.versions import ModelStore

    monkeypatch.setenv("BRAINSEG_HOME", str(tmp_path / "home"))
    scan = _scan(tmp_path / "s.nii.gz")
    train_out = tmp_path / "trained"
    shutil.copytree(tiny_model_dir, train_out / "best")  # what `brainseg train -o trained` leaves
    (train_out / "checkpoint").mkdir()
    name, d = ModelStore().new_version_dir("enet")
    shutil.copytree(tiny_model_dir, d, dirs_exist_ok=True)  # (the folder is reserved, empty)
    version = json.loads((d / "model.json").read_text()).get("version", name)
    for w in (str(train_out), str(tiny_model_dir), version):
        assert main(["segment", str(scan), "-o", str(tmp_path / "m.nii.gz"), "--weights", w,
                     "--planes", "axial"]) == 0, w
    capsys.readouterr()
    assert main(["segment", str(scan), "-o", str(tmp_path / "m.nii.gz"), "--weights", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "looked for" in err and "model.json" in err and "best" in err


def test_globs_take_scans_only_and_resume_matches_inputs_not_names(tmp_path, tiny_model_dir, capsys):
    """Review findings: a glob over a folder with an Analyze pair and a JSON sidecar finds one scan;
    a resume with an extra input of the same name processes it under a new name."""
    d = tmp_path / "d"
    d.mkdir()
    nib.save(nib.AnalyzeImage(np.ones((8, 8, 8), np.int16), np.eye(4)), str(d / "a_t88_masked_gfc.hdr"))
    (d / "a.json").write_text("{}")
    items = batch.discover([str(d / "*")])
    assert [Path(i.path).name for i in items] == ["a_t88_masked_gfc.hdr"]
    _scan(tmp_path / "c1" / "x.nii.gz", 1)
    _scan(tmp_path / "c2" / "x.nii.gz", 2)
    out = tmp_path / "out"
    batch.run(batch.discover([str(tmp_path / "c2" / "x.nii.gz")]), out, tiny_model_dir)
    rows, n = batch.run(batch.discover([str(tmp_path / "c1" / "x.nii.gz"), str(tmp_path / "c2" / "x.nii.gz")]),
                        out, tiny_model_dir, resume=True)
    assert n == 1 and len(rows) == 2
    by_input = {Path(r["input"]).parent.name: r for r in rows}
    assert by_input["c2"]["scan"] == "x" and by_input["c1"]["scan"] == "x_2"
    assert (out / "masks" / "x_seg.nii.gz").exists() and (out / "masks" / "x_2_seg.nii.gz").exists()


def test_a_dead_worker_is_an_error_row_not_the_end_of_the_batch():
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    f = Future()
    f.set_exception(BrokenProcessPool("a child process terminated abruptly"))
    row = batch._result_or_error_row(f, batch.ScanItem("s1", "s1", "", "/x/s1.nii.gz"))
    assert row["status"] == "error" and "BrokenProcessPool" in row["error"] and row["scan"] == "s1"


def test_resume_names_stay_unique_across_renamed_scans(tmp_path, tiny_model_dir):
    """Review finding: site2's sub-01 renamed on resume must not take site3's name."""
    for site in ("site1", "site2", "site3"):
        _scan(tmp_path / site / "sub-01.nii.gz", 1)
    out = tmp_path / "out"
    batch.run(batch.discover([str(tmp_path / "site1" / "sub-01.nii.gz")]), out, tiny_model_dir)
    items = [batch.ScanItem("sub-01", "sub-01", "", str(tmp_path / "site2" / "sub-01.nii.gz")),
             batch.ScanItem("sub-01_2", "sub-01", "", str(tmp_path / "site3" / "sub-01.nii.gz"))]
    rows, n = batch.run(items, out, tiny_model_dir, resume=True)
    assert n == 2 and len({r["scan"] for r in rows}) == 3
    assert len(list((out / "masks").glob("*.nii.gz"))) == 3


def test_jobs_retry_the_scans_of_a_worker_that_died(tmp_path, tiny_model_dir, monkeypatch):
    """A --jobs worker dies mid-scan (fault hook: os._exit in the worker): its scans are retried in
    new workers, the table is whole and every row ok."""
    hooks = Path(__file__).resolve().parent / "fault_hooks"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]))
    marker = tmp_path / "died"
    monkeypatch.setenv("BRAINSEG_TEST_KILL_BATCH_WORKER", str(marker))
    for i in range(4):
        _scan(tmp_path / "scans" / f"s{i}.nii.gz", i)
    items = batch.discover([str(tmp_path / "scans")])
    rows, n = batch.run(items, tmp_path / "out", tiny_model_dir, jobs=2)
    assert marker.exists(), "a worker did die"
    assert n == 4 and sorted(r["scan"] for r in rows) == sorted(i.key for i in items)
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]


def test_resume_from_another_folder_with_relative_paths(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Issue #20: relative INPUTs were stored as typed and resolved against the current folder on
    resume: resuming from inside OUTDIR redid every scan and added a second row for each."""
    for i in range(2):
        _scan(tmp_path / "data" / f"s{i}.nii.gz", i)
    monkeypatch.chdir(tmp_path)
    assert main(["batch", "data", "-o", "out", "--model", "enet", "--weights", str(tiny_model_dir)]) in (0, 3)
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert len(rows) == 2 and all(os.path.isabs(r["input"]) for r in rows)
    monkeypatch.chdir(tmp_path / "out")
    assert main(["batch", "../data", "-o", ".", "--resume", "--weights", str(tiny_model_dir)]) in (0, 3)
    assert "2 of 2 scans already" in capsys.readouterr().err
    again = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert [r["scan"] for r in again] == [r["scan"] for r in rows], "nothing redone, no second rows"
    # a table written before the fix (inputs as typed, relative) still resumes from OUTDIR
    old = [dict(r, input=os.path.relpath(r["input"], tmp_path)) for r in rows]
    with open(tmp_path / "out" / "volumes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0].keys()))
        w.writeheader()
        w.writerows(old)
    assert main(["batch", "../data", "-o", ".", "--resume", "--weights", str(tiny_model_dir)]) in (0, 3)
    assert len(list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))) == 2


def test_outdir_is_locked_and_a_stale_lock_is_taken_over(tmp_path, tiny_model_dir):
    import json as _json
    import socket as _socket

    _scan(tmp_path / "data" / "s0.nii.gz", 0)
    items = batch.discover([str(tmp_path / "data")])
    out = tmp_path / "out"
    out.mkdir()
    live = {"host": _socket.gethostname(), "pid": os.getppid(), "started": "now"}  # a running process
    (out / batch.LOCK_FILE).write_text(_json.dumps(live))
    with pytest.raises(batch.BatchError, match=f"another batch is writing here .*pid {os.getppid()}"):
        batch.run(items, out, tiny_model_dir)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    (out / batch.LOCK_FILE).write_text(_json.dumps(dict(live, pid=p.pid)))  # that process is gone: stale
    rows, n = batch.run(items, out, tiny_model_dir)
    assert n == 1 and not (out / batch.LOCK_FILE).exists(), "taken over, and released at the end"


def test_a_dask_worker_started_elsewhere_writes_where_the_user_asked(tmp_path, tiny_model_dir, monkeypatch):
    """Issue #20: a relative -o (and relative inputs) were resolved in each worker's own folder."""
    _scan(tmp_path / "here" / "scans" / "s0.nii.gz", 0)
    (tmp_path / "elsewhere").mkdir()
    port = _free_port()
    bindir = Path(sys.executable).parent
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, cwd=tmp_path / "elsewhere",
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(3)
        procs.append(subprocess.Popen(
            [str(bindir / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--nworkers", "1", "--nthreads", "1",
             "--no-dashboard", "--no-nanny"], env=env, cwd=tmp_path / "elsewhere",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=30) as c:
            c.wait_for_workers(1, timeout=60)
        monkeypatch.chdir(tmp_path / "here")
        items = batch.discover(["scans"])
        rows, n = batch.run(items, Path("out"), tiny_model_dir, scheduler=f"tcp://127.0.0.1:{port}")
        assert n == 1 and rows[0]["status"] == "ok", rows[0]["error"]
        assert (tmp_path / "here" / "out" / rows[0]["mask"]).exists()
        assert not (tmp_path / "elsewhere" / "out").exists()
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def test_the_report_names_the_model_and_resume_refuses_to_mix_versions(tmp_path, tiny_model_dir):
    import shutil

    for i in range(2):
        _scan(tmp_path / "data" / f"s{i}.nii.gz", i)
    items = batch.discover([str(tmp_path / "data" / "s0.nii.gz")])
    rows, _ = batch.run(items, tmp_path / "out", tiny_model_dir)
    page = (tmp_path / "out" / "report.html").read_text()
    version = rows[0]["model_version"]
    assert f"Model: ENet, version {version}" in page and "Model version" in page
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    meta = json.loads((other / "model.json").read_text())
    meta["version"] = "enet-v099"
    (other / "model.json").write_text(json.dumps(meta))
    more = batch.discover([str(tmp_path / "data")])
    with pytest.raises(batch.BatchError, match=f"segmented with {version}, and this run would use enet-v099"):
        batch.run(more, tmp_path / "out", other, resume=True)
    rows, n = batch.run(more, tmp_path / "out", other, resume=True, allow_mixed_versions=True)
    assert n == 1 and "Rows come from 2 model versions" in (tmp_path / "out" / "report.html").read_text()


def test_batch_runs_int8_where_offered_says_so_and_never_mixes_it_with_fp32_rows(tmp_path, tiny_model_dir,
                                                                                  monkeypatch, capsys):
    """Issue #21: batch follows segment's default precision (INT8 where the model's record offers
    it); INT8 rows say so in model_version, and resuming an FP32 table with INT8 is refused."""
    import shutil

    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    for i in range(2):
        _scan(tmp_path / "data" / f"s{i}.nii.gz", i)
    offered = tmp_path / "offered"
    shutil.copytree(tiny_model_dir, offered)
    meta = json.loads((offered / "model.json").read_text())
    meta["int8"] = {"dice_change": {"csf": 0.001, "gm": 0.0, "wm": 0.0}, "speedup": 2.0}
    (offered / "model.json").write_text(json.dumps(meta))
    first = batch.discover([str(tmp_path / "data" / "s0.nii.gz")])
    rows, _ = batch.run(first, tmp_path / "fp32", offered, precision="fp32")
    assert rows[0]["model_version"] == "tiny-test"
    rows, _ = batch.run(first, tmp_path / "int8", offered)
    assert rows[0]["model_version"] == "tiny-test (INT8)"
    both = batch.discover([str(tmp_path / "data")])
    with pytest.raises(batch.BatchError, match=r"segmented with tiny-test, and this run would use tiny-test \(INT8\)"):
        batch.run(both, tmp_path / "fp32", offered, resume=True)
    rows, n = batch.run(both, tmp_path / "fp32", offered, resume=True, precision="fp32")
    assert n == 1 and {r["model_version"] for r in rows} == {"tiny-test"}
    # the CLI: --precision int8 where INT8 is not offered is refused, naming why
    assert main(["batch", str(tmp_path / "data"), "-o", str(tmp_path / "cli"), "--weights", str(tiny_model_dir),
                 "--precision", "int8"]) == 2
    assert "INT8 has not been validated" in capsys.readouterr().err


def _certificates(d: Path) -> dict:
    """A throw-away CA and one certificate for 127.0.0.1 that scheduler, workers and client share."""
    d.mkdir(parents=True, exist_ok=True)
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=brainseg-test-ca")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "node.pem", "-days", "1", "-extfile", "san.ext")
    return {"ca": str(d / "ca.pem"), "cert": str(d / "node.pem"), "key": str(d / "node.key")}


def test_a_tls_cluster_of_two_workers_and_plaintext_refused_away_from_here(tmp_path, tiny_model_dir, capsys):
    """Issue #20: a tls:// scheduler and two workers on 127.0.0.1 with certificates this test makes;
    a plaintext scheduler on another machine is refused unless --insecure."""
    for i in range(3):
        _scan(tmp_path / "scans" / f"s{i}.nii.gz", i)
    with pytest.raises(batch.BatchError, match="plaintext scheduler on another machine"):
        batch.run(batch.discover([str(tmp_path / "scans")]), tmp_path / "x", tiny_model_dir,
                  scheduler="tcp://10.0.0.5:8786")
    assert not (tmp_path / "x").exists(), "refused before anything was written"
    with pytest.raises(batch.BatchError, match="TLS needs --tls-cert, --tls-key"):
        batch.run([], tmp_path / "x", tiny_model_dir, scheduler="tls://127.0.0.1:1",
                  security=batch.ClusterSecurity(tls_ca_file="ca.pem"))
    c = _certificates(tmp_path / "tls")
    tls = ["--tls-ca-file", c["ca"], "--tls-cert", c["cert"], "--tls-key", c["key"]]
    port = _free_port()
    bindir = Path(sys.executable).parent
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--protocol", "tls", "--no-dashboard", *tls], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(3)
        for _ in range(2):
            procs.append(subprocess.Popen(
                [str(bindir / "dask"), "worker", f"tls://127.0.0.1:{port}", "--nworkers", "1", "--nthreads", "1",
                 "--no-dashboard", "--no-nanny", *tls], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        from distributed import Client
        from distributed.security import Security

        sec = Security(tls_ca_file=c["ca"], tls_client_cert=c["cert"], tls_client_key=c["key"],
                       require_encryption=True)
        with Client(f"tls://127.0.0.1:{port}", security=sec, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        with pytest.raises(batch.BatchError, match="cannot reach"):  # no certificate: no way in
            batch.run(batch.discover([str(tmp_path / "scans")]), tmp_path / "plain", tiny_model_dir,
                      scheduler=f"tcp://127.0.0.1:{port}")
        assert main(["batch", str(tmp_path / "scans"), "-o", str(tmp_path / "out"), "--weights", str(tiny_model_dir),
                     "--scheduler", f"tls://127.0.0.1:{port}", *tls]) in (0, 3)
        rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
        assert len(rows) == 3 and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    finally:
        for p in procs:
            p.kill()
            p.wait(10)



def test_dicom_subjects_series_and_header_reads(tmp_path, monkeypatch):
    """Issue #20: patientA/T1_MPRAGE and patientB/T1_MPRAGE were both subject T1_MPRAGE; one file of
    a T1 series queued every series of its folder; a glob over N files read every header N times."""
    import pydicom

    from engine.io import dicom

    vol = np.zeros((8, 8, 6), np.float32) + 100
    for pat in ("patientA", "patientB"):
        write_series(tmp_path / pat / "T1_MPRAGE", vol, np.eye(4), series_number=1, patient_id=f"ID-{pat}")
    write_series(tmp_path / "patientA" / "T1_MPRAGE", vol, np.eye(4), series_number=9, description="localizer",
                 prefix="LOC")
    items = batch.discover([str(tmp_path / "patientA" / "T1_MPRAGE"), str(tmp_path / "patientB" / "T1_MPRAGE")])
    assert sorted({i.subject for i in items}) == ["patientA", "patientB"]
    one = batch.discover([str(tmp_path / "patientA" / "T1_MPRAGE" / "IM01_0002.dcm")])
    assert len(one) == 1 and one[0].series is not None, "one file: that series only"
    dicom._HEADERS.clear()
    reads = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: (reads.append(a[0]), real(*a, **k))[1])
    items = batch.discover([str(tmp_path / "patientB" / "T1_MPRAGE" / "*.dcm")])
    assert len(items) == 1 and len(reads) == 6, f"{len(reads)} header reads for 6 files"
    # --subject-from patientid: a salted hash, stable for one OUTDIR, never the ID in clear
    out = tmp_path / "out"
    batch.apply_subject_from(items, "patientid", out)
    first = items[0].subject
    assert first.startswith("pid-") and "ID-patientB" not in first and "patientB" not in items[0].key
    again = batch.discover([str(tmp_path / "patientB" / "T1_MPRAGE")])
    batch.apply_subject_from(again, "patientid", out)
    assert again[0].subject == first, "stable for the same OUTDIR"
    other = batch.discover([str(tmp_path / "patientB" / "T1_MPRAGE")])
    batch.apply_subject_from(other, "patientid", tmp_path / "out2")
    assert other[0].subject != first, "salted per OUTDIR"
