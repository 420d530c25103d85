"""Sweep planning: value lists, the experiment presets, the grid of cells (shared by the CLI and /sweep)."""
