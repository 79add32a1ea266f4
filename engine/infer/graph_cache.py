"""Inference graphs kept between processes: a folder of MXNet SymbolBlock exports in the start-up
cache (engine.core.mx_opcache.cache_dir), one entry per key.

Two users:
- "int8/": the quantized graph of a model (engine.infer.quantize.quantized_network): quantizing
  costs seconds (U-Net 4.3 s here), loading the entry 0.02 s;
- "fp32/": the FP32 graph after the oneDNN subgraph pass (conv + BatchNorm + activation fused),
  which the Segmenter otherwise rebuilds at every start - building the Gluon network, loading
  its parameters, ENet's fuse_for_inference, and the partitioning at the first forward pass.
  Loading the entry instead saved about 0.2 s of each ENet start here (0.21-0.29 -> 0.07-0.11 s
  to a ready network, 0.43-0.51 -> 0.39-0.40 s for the first batch; 2026-12-04), with identical
  logits (tests/engine/test_graph_cache.py).

An entry is `{key}-0000.params`, `{key}-meta.json` (what the network says of itself: its input
multiple, its parameter count) and `{key}-symbol.json`, written in that order through a temporary
folder and os.replace: the symbol file marks an entry complete, so a write killed half-way leaves
nothing that is ever loaded. A missing, damaged or unwritable cache never stops a segmentation:
the caller builds the network as if there were none. The folder keeps the `entries` most
recently used entries (a hit touches its symbol file).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from engine.core.mx_env import get_mx

_log = logging.getLogger(__name__)


def entry_files(folder: Path, key: str) -> tuple[Path, Path, Path]:
    """(symbol, parameters, meta) of an entry, the symbol and parameters as SymbolBlock.export names them."""
    return folder / f"{key}-symbol.json", folder / f"{key}-0000.params", folder / f"{key}-meta.json"


class GraphCache:
    def __init__(self, name: str, log: logging.Logger | None = None):
        from engine.core.mx_opcache import cache_dir

        self.log = log or _log  # the caller's logger: its messages read as the caller's
        try:
            self.folder: Path | None = cache_dir() / name
        except Exception as e:  # noqa: BLE001 - e.g. Path.home() without HOME and a passwd entry
            self.log.info("no cache folder (%s): graphs are built at every start", e)
            self.folder = None

    def load(self, key: str, ctx=None):
        """The cached SymbolBlock of `key` (with `multiple` and `parameter_count` set from its meta),
        or None when there is no complete, readable entry."""
        if self.folder is None:
            return None
        sym, params, meta = entry_files(self.folder, key)
        mx = get_mx()
        try:
            if not sym.exists():  # (inside the try: a folder we may not search raises PermissionError)
                return None
            info = json.loads(meta.read_text()) if meta.exists() else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                # SymbolBlock.imports, without a gradient buffer per parameter: the graph is for
                # inference only, and those buffers (zeros, marked for autograd) were 0.06 s of the
                # 0.1 s an ENet load took here
                net = mx.gluon.SymbolBlock(mx.sym.load(str(sym)), [mx.sym.var("data")])
                net.collect_params().setattr("grad_req", "null")
                net.collect_params().load(str(params), ctx or mx.cpu(), cast_dtype=True, dtype_source="saved")
            for attr in ("multiple", "parameter_count"):
                if attr in info:
                    setattr(net, attr, int(info[attr]))
        except Exception as exc:  # noqa: BLE001 - a damaged cache must never stop a segmentation
            self.log.warning("cached graph %s is unreadable (%s); building it again", sym, exc)
            return None
        try:
            os.utime(sym)  # recently used: the last to be evicted
        except OSError:
            pass  # a read-only cache still serves
        return net

    def store(self, key: str, net, entries: int, **meta) -> bool:
        """Export `net` (a hybridized block that has run forward once) as the entry `key`, then keep the
        `entries` most recently used. False, with a warning, when it could not be written."""
        if self.folder is None:
            return False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._drop_stale_writes()
            tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=".writing-"))
            try:
                net.export(str(tmp / "g"))
                exported = tmp / "g-0000.params"
                # MXNet writes an empty file, without an error, for a block that never ran forward (a
                # small file is read to tell; a network's own is megabytes)
                if exported.stat().st_size < 65536 and get_mx().nd.load(str(exported)) == {}:
                    raise OSError("the exported parameters are empty")
                (tmp / "g-meta.json").write_text(json.dumps(meta))
                sym, params, meta_file = entry_files(self.folder, key)
                os.replace(tmp / "g-0000.params", params)
                os.replace(tmp / "g-meta.json", meta_file)
                os.replace(tmp / "g-symbol.json", sym)  # last: it is what marks an entry complete
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._evict(entries)
            return True
        except Exception as exc:  # noqa: BLE001 - disk full, quota (MXNetError): never fails the segmentation
            self.log.warning("graph cache not written (%s): the next start builds the graph again", exc)
            return False

    def _drop_stale_writes(self, age_s: float = 3600.0) -> None:
        """Remove half-written entries (".writing-*") left by a process killed while writing, once they
        are an hour old (a younger one may belong to a process writing now)."""
        for d in self.folder.glob(".writing-*"):
            try:
                if time.time() - d.stat().st_mtime > age_s:
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                pass

    def _evict(self, keep: int, orphan_age_s: float = 3600.0) -> None:
        """Keep the `keep` most recently used entries and remove the rest, the symbol first: an entry
        without its symbol is never loaded. Parameter and meta files without a symbol (a removal that
        failed half-way, a process killed between its renames) go once they are an hour old."""
        for suffix in ("-0000.params", "-meta.json"):
            for f in self.folder.glob("*" + suffix):
                try:
                    no_symbol = not entry_files(self.folder, f.name[: -len(suffix)])[0].exists()
                    if no_symbol and time.time() - f.stat().st_mtime > orphan_age_s:
                        f.unlink()
                except OSError:
                    pass
        found = []
        for sym in self.folder.glob("*-symbol.json"):
            try:
                found.append((sym.stat().st_mtime, sym))
            except OSError:
                pass
        for _, sym in sorted(found, reverse=True)[keep:]:
            for f in entry_files(self.folder, sym.name[: -len("-symbol.json")]):
                try:
                    f.unlink()
                except OSError:
                    pass
