"""Which network suits this machine: U-Net on a workstation, ENet on a low-power laptop."""
from __future__ import annotations

import os

WORKSTATION_CORES = 8
WORKSTATION_RAM_GB = 16.0


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ram_gb() -> float:
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except Exception:  # psutil missing or unsupported platform
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        except (ValueError, OSError, AttributeError):
            return 0.0


def choose_model(preference: str = "auto") -> tuple[str, str]:
    """(arch, reason). "unet"/"enet" are honoured; "auto" picks from the hardware."""
    pref = (preference or "auto").lower()
    if pref in ("unet", "enet"):
        return pref, "chosen by the user"
    if pref != "auto":
        raise ValueError(f"unknown model {preference!r}; choose auto, unet or enet")
    from .mx_env import gpu_available

    cores, ram = cpu_cores(), ram_gb()
    try:
        gpu = gpu_available()  # loads mxnet if it is not loaded yet (about a second)
    except Exception:  # mxnet missing or broken: the segment step will say so itself
        gpu = False
    if gpu:
        return "unet", f"an MXNet GPU is available ({cores} CPU cores, {ram:.0f} GB RAM)"
    if cores >= WORKSTATION_CORES and ram >= WORKSTATION_RAM_GB:
        return "unet", f"workstation profile ({cores} CPU cores, {ram:.0f} GB RAM, no GPU)"
    return "enet", (f"low-power profile ({cores} CPU cores, {ram:.0f} GB RAM, no GPU; "
                     f"U-Net needs a GPU or >= {WORKSTATION_CORES} cores and {WORKSTATION_RAM_GB:.0f} GB)")
