"""Merge methods. Importing this package registers every method module listed below."""

import importlib

from l2smerge.methods.registry import METHODS, MergeMethod, get_method, register

# One module per family; a module not written yet is skipped.
_MODULES = ("task_vector", "svd", "aim", "sens")
for _name in _MODULES:
    try:
        importlib.import_module(f"l2smerge.methods.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"l2smerge.methods.{_name}":
            raise

__all__ = ["METHODS", "MergeMethod", "get_method", "register"]
