"""Scans and label maps on disk and on their grids: reading and writing volumes, geometry (the
networks' grid, view orientation), exports, statistics and crash-recovery files."""
