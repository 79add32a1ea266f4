"""Editing tools: the actions and menus, and the whole-map label operations (fill between slices, islands, largest piece, smoothing)."""
