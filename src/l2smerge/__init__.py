"""l2smerge: long-to-short reasoning by model merging."""

__version__ = "0.1.0"
