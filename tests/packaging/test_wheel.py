"""A built wheel works outside the checkout: `pip wheel .`, install it into a fresh virtual
environment in a temporary folder, and run `brainseg info` and `brainseg segment` on the demo scan
that the wheel carries (the resources travel as the package brainseg_resources).

The new environment sees only what the wheel's own metadata asks for (issue #20: it used to see the
whole test environment, so a missing install requirement could not fail this test): the closure of
its Requires-Dist over the test environment's installed distributions - the "wheelhouse" - is
laid out file by file in a folder of its own, and nothing else is on its path."""
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lay_out_closure(requires: list[str], dest: Path) -> list[str]:
    """Copy (hard-link where possible) the files of every installed distribution that `requires`
    needs, transitively (markers evaluated, no extras), into `dest`; returns requirements that no
    installed distribution satisfies."""
    import shutil
    from importlib import metadata

    from packaging.requirements import Requirement

    dest.mkdir(parents=True, exist_ok=True)
    seen, missing, todo = set(), [], list(requires)
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        for f in dist.files or []:
            src = Path(dist.locate_file(f))
            if f.parts and f.parts[0] in ("..",) or not src.is_file() or src.suffix == ".pth":
                continue
            out = dest / f
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, out)
            except OSError:
                shutil.copy2(src, out)
        todo += [r for r in (dist.requires or []) if "extra ==" not in r]
    return missing


@pytest.mark.slow
def test_wheel_installs_and_segments_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    # build from a copy of the tracked files, so the checkout gets no build/ or egg-info folders
    src = tmp_path / "src"
    files = subprocess.check_output(["git", "ls-files"], cwd=ROOT, text=True).split()
    import shutil

    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(dist), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(dist.glob("brainseg-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    deps = tmp_path / "deps"
    missing = _lay_out_closure(requires, deps)
    assert not missing, f"the wheel's requirements are not installed here: {missing}"
    (site / "deps.pth").write_text(str(deps) + "\n")  # a plain path: no .pth of the test env is processed
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)  # a wheel is a zip laid out for site-packages: installing it is unpacking it
        names = z.namelist()
    assert "brainseg_resources/weights/enet/model.params" in names
    assert not any("candidates" in n for n in names)  # trained, not shipped: resources/weights/candidates
    assert "brainseg_resources/demo/demo_t88_masked_gfc.img" in names
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["BRAINSEG_HOME"] = str(tmp_path / "home")
    code = ("import engine, engine.core.paths as p; print(engine.__file__); print(p.RESOURCES); "
            "from engine.cli import main; raise SystemExit(main(__import__('sys').argv[1:]))")
    info = subprocess.run([str(py), "-c", code, "info", "--json", str(site / "brainseg_resources" / "demo" /
                                                                   "demo_t88_masked_gfc.hdr")],
                          capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert info.returncode == 0, info.stderr[-2000:]
    lines = info.stdout.splitlines()
    assert str(ROOT) not in lines[0] and lines[0].startswith(str(site))
    assert lines[1].startswith(str(site)) and '"shape": [176, 208, 176]' in lines[2]
    seg = subprocess.run([str(py), "-c", code, "segment", str(site / "brainseg_resources" / "demo" /
                                                              "demo_t88_masked_gfc.hdr"),
                          "-o", str(work / "mask.nii.gz"), "--model", "enet", "--planes", "axial"],
                         capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert seg.returncode == 0, seg.stderr[-2000:]
    assert (work / "mask.nii.gz").stat().st_size > 10_000
