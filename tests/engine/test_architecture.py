"""The engine never imports Qt (also checked statically by import-linter in `make test`)."""
import subprocess
import sys


def test_importing_every_engine_module_loads_no_qt():
    code = (
        "import pkgutil, importlib, sys, engine, engine.nets\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PyQt5', 'pyqtgraph', 'brainseg_gui')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
