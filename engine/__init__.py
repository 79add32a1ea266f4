"""BrainSeg engine: volumes, label maps and their history, models, inference, training, metrics,
export and the command line. Never imports Qt (enforced by an import-linter contract and a test)."""

__version__ = "0.1.0"
