"""QSettings for window state and recent files only (versioned); preferences are a typed object
stored as JSON in the app's data folder. Tests isolate both through BRAINSEG_HOME."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

from PyQt5 import QtCore

from engine.core.atomic import atomic_write
from engine.core.paths import data_dir

log = logging.getLogger(__name__)
SETTINGS_VERSION = 1


def app_settings() -> QtCore.QSettings:
    path = data_dir() / "window.ini"
    s = QtCore.QSettings(str(path), QtCore.QSettings.IniFormat)
    if s.value("version", 0, type=int) != SETTINGS_VERSION:
        s.clear()
        s.setValue("version", SETTINGS_VERSION)
    return s


@dataclass
class Preferences:
    model: str = "auto"  # auto | unet | enet (remembered override)
    batch_size: int | None = None  # None: the fastest measured for the network
    preload_model: bool = True  # load the model in the background when a scan opens
    strip: str = "auto"  # brain extraction before segmenting: auto (a skull found) | on | off
    last_auto_model: str | None = None  # what "auto" chose last time: a changed default is said once
    int8: bool | None = None  # the INT8 checkbox as the user last set it; None: on where offered

    @classmethod
    def load(cls) -> "Preferences":
        path = data_dir() / "preferences.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except FileNotFoundError:
            return cls()
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unreadable preferences %s: %s", path, exc)
            return cls()

    def save(self) -> None:
        path = data_dir() / "preferences.json"
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8"))
