"""Label maps: the editable map with its undo history, and the classical tissue model."""
