"""The declared dependencies match the imports (issue #20: Pillow was imported and not declared;
Dask, ONNX and matplotlib were hard requirements of optional features)."""
import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE = [ROOT / "engine", ROOT / "brainseg_gui"]
OURS = {"engine", "brainseg_gui", "brainseg_resources"}
# needed indirectly, or an import name without a distribution here: why each is allowed
ALLOWED = {
    "OpenGL": "PyOpenGL, imported by pyqtgraph.opengl (declared)",
}


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")

    def names(text):
        out = set()
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.add(re.split(r"[<>=!\[;\s]", line)[0].lower().replace("_", "-"))
                if line.startswith("dask[distributed]"):  # dask's extra is the distributed package
                    out.add("distributed")
        return out

    base = names(cfg["options"]["install_requires"])
    extras = {k: names(v) for k, v in cfg["options.extras_require"].items()}
    return base, extras


def _imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the files importing it."""
    out: dict[str, set[str]] = {}
    for root in CODE:
        for f in root.rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                for m in mods:
                    top = m.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in OURS and top != "__future__":
                        out.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return out


def test_every_import_is_declared_and_optional_ones_are_extras():
    base, extras = _declared()
    dists = packages_distributions()
    optional = set().union(*extras.values()) - base
    missing = []
    for mod, files in sorted(_imports().items()):
        if mod in ALLOWED:
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(mod, [])}
        if not names:
            missing.append(f"{mod} (no installed distribution provides it; imported by {sorted(files)[0]})")
        elif not names & (base | optional):
            missing.append(f"{mod} ({', '.join(sorted(names))}, imported by {sorted(files)[0]}) is not declared")
    assert not missing, "\n".join(missing)
    for extra in ("cluster", "export", "plots"):
        assert extras[extra] and not extras[extra] & base, f"{extra}: optional, so not a hard requirement"
    assert extras["all"] >= extras["cluster"] | extras["export"] | extras["plots"]


def test_a_missing_extra_is_named(monkeypatch):
    from engine.core.extras import MissingExtra, need

    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(MissingExtra, match=r"pip install 'brainseg\[cluster\]'"):
        need("distributed", "--scheduler")


def test_the_engine_never_imports_the_gui_not_even_dynamically():
    """import-linter sees static imports; a dynamic import_module("brainseg_gui...") passed around it."""
    for f in (ROOT / "engine").rglob("*.py"):
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"import_module\(\s*[\"']brainseg_gui", text), f
        assert not re.search(r"__import__\(\s*[\"']brainseg_gui", text), f
