"""A disk cache for the Python functions MXNet generates for its operators at import.

Why (issue #21, start-up): `import mxnet` writes the source of one Python function per operator,
twice (mxnet.ndarray and mxnet.symbol, 2,556 functions, 5 MB of source), and compiles each with
`exec(source)`. Compiling was 0.81 s of a 1.76 s import on this machine (measured with a training
running, so the share, not the seconds). Python caches the bytecode of modules in __pycache__, but
not of source handed to exec, so every `brainseg segment` paid it again.

How: while mxnet imports, the two modules that call exec (mxnet.ndarray.register and
mxnet.symbol.register) get a module-level `exec` that looks the source up by its SHA-1 in a dict of
code objects (marshal, like __pycache__) and compiles only what it has not seen. Each function's
source embeds its operator's handle, a pointer that changes with every process (ASLR): the handle is
replaced by a sentinel before hashing and compiling, and the cached code object gets the process's
handle back in its constants. Apart from the handle, the lookup is keyed by the whole source text,
so a different MXNet build can only miss, never run a stale function. After
the import, a cache that missed is rewritten (atomically) with exactly the functions this import
used. Anything wrong with the cache - missing, unreadable, corrupt, written by another Python,
a full or read-only disk - falls back to compiling, as mxnet does itself; nothing else changes.

The file lives in cache_dir() (BRAINSEG_CACHE, else $XDG_CACHE_HOME/brainseg or ~/.cache/brainseg),
as marshal data written by this user, like Python's own .pyc files.
"""
from __future__ import annotations

import builtins
import functools
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import marshal
import os
import re
import sys
import tempfile
from pathlib import Path
from types import CodeType

log = logging.getLogger(__name__)

MODULES = ("mxnet.ndarray.register", "mxnet.symbol.register")
HEADER = b"brainseg-mx-opcache-2\n" + importlib.util.MAGIC_NUMBER
# `return _imperative_invoke(<handle>, ...` (ndarray) and `return _symbol_creator(<handle>, ...` (symbol)
_HANDLE = re.compile(r"\b(_imperative_invoke|_symbol_creator)\((\d+),", re.ASCII)  # what _normalised finds
_CALLS = ("_imperative_invoke(", "_symbol_creator(")
SENTINEL = (1 << 62) + 0x5EED  # stands for the handle in cached code; no operator's source has it


def _normalised(source: str) -> tuple[str, set[int]]:
    """(source with every operator handle replaced by SENTINEL, the handles found): _HANDLE's
    matches, found by str.find of the two call names, as most of the 2,556 sources are searched for
    nothing else. Two regex passes over the 5 MB of source (finditer, then sub) took 0.14 s of each
    start-up here (cProfile, 2026-12-04); this takes about 0.01 s. Same result as
    `_HANDLE.sub(...)` with the handles of `_HANDLE.finditer(source)` (tests/engine/test_mx_opcache.py)."""
    spans = []
    for name in _CALLS:
        i = source.find(name)
        while i >= 0:
            j = k = i + len(name)
            while k < len(source) and source[k] in "0123456789":
                k += 1
            start_ok = i == 0 or not (source[i - 1].isalnum() or source[i - 1] == "_")
            if k > j and source.startswith(",", k) and start_ok:
                spans.append((j, k))
            i = source.find(name, max(k, i + 1))
    if not spans:
        return source, set()
    spans.sort()
    parts, at = [], 0
    for j, k in spans:
        parts += [source[at:j], str(SENTINEL)]
        at = k
    parts.append(source[at:])
    return "".join(parts), {int(source[j:k]) for j, k in spans}


def _compile(source: str) -> CodeType:
    # dont_inherit: not this module's `from __future__` flags, as mxnet's own exec would not have them
    return compile(source, "<string>", "exec", dont_inherit=True)


def _with_constant(code: CodeType, old: int, new: int) -> tuple[CodeType, int]:
    """`code` with the integer constant `old` replaced by `new` in it and its nested code objects;
    and how many were replaced."""
    n = 0
    consts = []
    for c in code.co_consts:
        if type(c) is int and c == old:
            c, n = new, n + 1
        elif isinstance(c, CodeType):
            c, k = _with_constant(c, old, new)
            n += k
        consts.append(c)
    return (code.replace(co_consts=tuple(consts)) if n else code), n


LAST: dict = {}  # the last cached import's hits and compilations (tests, bench)


def cache_dir() -> Path:
    """Where start-up caches live: BRAINSEG_CACHE, else XDG's cache folder. Not BRAINSEG_HOME: the
    cache holds no user data (MXNet's own code, keyed by its source), and a per-home copy would be
    rewritten (0.7 s) by every process started with a fresh home, as the tests do."""
    if os.environ.get("BRAINSEG_CACHE"):
        return Path(os.environ["BRAINSEG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "brainseg"


@functools.lru_cache(maxsize=1)
def mxnet_build() -> str:
    """Which MXNet build is installed: libmxnet.so's size and time ("0" when not found). Two venvs
    can share a version string with different builds. Looked up once per process."""
    build = "0"
    spec = importlib.machinery.PathFinder.find_spec("mxnet")
    if spec is not None and spec.submodule_search_locations:
        lib = Path(list(spec.submodule_search_locations)[0]) / "libmxnet.so"
        try:
            st = lib.stat()
            build = f"{st.st_size:x}-{st.st_mtime_ns:x}"
        except OSError:
            pass
    return build


def cache_path() -> Path:
    """One file per Python and MXNet build (two venvs with different builds would otherwise keep
    rewriting one file)."""
    return cache_dir() / f"mxnet-ops.{sys.implementation.cache_tag}.{mxnet_build()}.marshal"


class OpCodeCache:
    """Code objects of exec'd source, keyed by the source's SHA-1."""

    def __init__(self, path: Path):
        self.path = path
        self.codes: dict[bytes, object] = {}
        self.used: dict[bytes, object] = {}
        self.hits = self.misses = self.fallbacks = 0
        try:
            blob = path.read_bytes()
            if not blob.startswith(HEADER):
                raise ValueError("not a cache of this Python")
            codes = marshal.loads(blob[len(HEADER):])
            if not isinstance(codes, dict):
                raise ValueError("not a dict")
            self.codes = {k: v for k, v in codes.items() if type(v) is CodeType}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, EOFError, TypeError) as e:
            log.info("MXNet operator cache %s unusable (%s): compiling", path, e)

    def compiled(self, source: str):
        """The code object of `source`, from the cache when it has it. Anything unexpected compiles
        `source` itself (counted in `fallbacks`), as exec would."""
        try:
            norm, handles = _normalised(source)
            if len(handles) > 1 or str(SENTINEL) in source:  # not the shape we know: no cache
                self.fallbacks += 1
                return _compile(source)
            key = hashlib.sha1(norm.encode("utf-8")).digest()
            code = self.codes.get(key)
            if code is None:
                code = self.codes[key] = _compile(norm)
                self.misses += 1
            else:
                self.hits += 1
            self.used[key] = code
            if handles:
                code, n = _with_constant(code, SENTINEL, handles.pop())
                if n == 0:  # the sentinel did not survive as a constant
                    self.fallbacks += 1
                    return _compile(source)
            return code
        except Exception as e:  # noqa: BLE001 - the cache must never be why mxnet fails to import
            log.info("MXNet operator cache: %s; compiling", e)
            self.fallbacks += 1
            return _compile(source)

    def exec_for(self, module_globals: dict):
        """An `exec` for one module: source strings go through the cache; everything else, and a
        call without globals and locals (it would need the caller's frame), is the builtin's."""

        def cached_exec(source, globals=None, locals=None):  # noqa: A002 (exec's own signature)
            if not isinstance(source, str) or (globals is None and locals is None):
                frame = sys._getframe(1)
                return builtins.exec(source, frame.f_globals if globals is None else globals,
                                     frame.f_locals if locals is None else locals)
            return builtins.exec(self.compiled(source), module_globals if globals is None else globals, locals)

        return cached_exec

    def save(self) -> None:
        """Rewrite the file with the functions this import used, when anything missed."""
        if not self.misses:
            return
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(HEADER + marshal.dumps(self.used))
            os.replace(tmp, self.path)
        except (OSError, ValueError) as e:
            log.info("MXNet operator cache not written to %s (%s)", self.path, e)
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


class _Finder(importlib.abc.MetaPathFinder):
    """Gives MODULES a cached `exec` before their bodies run."""

    def __init__(self, cache: OpCodeCache):
        self.cache = cache
        self.patched: list = []
        self.active = True

    def find_spec(self, name, path, target=None):
        if not self.active or name not in MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, cache, patched = spec.loader, self.cache, self.patched
        original = loader.exec_module

        def exec_module(module):
            module.__dict__["exec"] = cache.exec_for(module.__dict__)
            patched.append(module)
            original(module)

        loader.exec_module = exec_module
        return spec


def import_mxnet_cached():
    """`import mxnet` with the operator-function cache; returns the module. A plain import when
    mxnet is already imported, or when the cache cannot even be set up (no home folder, say)."""
    if "mxnet" in sys.modules:
        import mxnet  # noqa: PLC0415

        return mxnet
    try:
        cache = OpCodeCache(cache_path())
    except Exception as e:  # noqa: BLE001 - e.g. Path.home() without HOME and a passwd entry
        log.info("MXNet operator cache unavailable (%s)", e)
        import mxnet  # noqa: PLC0415

        return mxnet
    finder = _Finder(cache)
    # The finder stays in sys.meta_path, switched off after the import: removing it from the list
    # while another thread (the GUI's) walks the list could make that thread skip a finder.
    sys.meta_path.insert(0, finder)
    try:
        import mxnet  # noqa: PLC0415
    finally:
        finder.active = False
        for module in finder.patched:  # later exec calls (none known) use the builtin again
            module.__dict__.pop("exec", None)
    log.debug("MXNet operator cache: %d hits, %d compiled, %d fallbacks", cache.hits, cache.misses,
              cache.fallbacks)
    cache.save()
    LAST.update(hits=cache.hits, compiled=cache.misses, fallbacks=cache.fallbacks, path=str(cache.path))
    return mxnet
