"""Merging: checkpoint I/O, the streaming executor, recipes (YAML configs, presets) and
provenance. Methods themselves live in l2smerge.methods."""
