"""BrainSeg engine: everything but the widgets. Never imports Qt.

Rooms, each importing only those below it (import-linter contracts in pyproject.toml):
cli / bench -> package -> store -> train -> infer -> nets -> labels -> io -> core."""

__version__ = "0.1.0"
