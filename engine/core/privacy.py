"""What files that leave this machine may say about patients (issue #20): no scan names, no home
paths; where a name must be recognisable again (did two model versions learn from the same scan?)
it is a hash salted per installation, so it cannot be looked up in a list of common file names."""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path, PurePath

from engine.core.paths import data_dir


def _salt() -> str:
    path = data_dir() / "salt"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_hex(16)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        return value
    except OSError:
        return ""


def name_fingerprint(name: str) -> str:
    """'salted-sha256:<16 hex>' of a file's name (not its folder), '' for none."""
    if not name:
        return ""
    base = PurePath(str(name)).name
    return "salted-sha256:" + hashlib.sha256((_salt() + base).encode("utf-8")).hexdigest()[:16]


_HOME = str(Path.home())


def scrub(value):
    """A record with every absolute or home path removed, recursively (model.json files go into
    packages and to colleagues): no home folders, and no file names, which are often a patient's."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value) and (
            os.path.isabs(value) or value.startswith("~") or _HOME in value):
        return "(path removed)"
    return value
