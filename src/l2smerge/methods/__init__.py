"""Merge methods. Importing this package imports every module in it, and so registers every
method: a new method is a new module here (docs/methods.md, "Adding a method"). A module
that fails to import fails the import of the package, naming the module."""

import importlib
import pkgutil

from l2smerge.methods.registry import (
    METHODS,
    WRAPPERS,
    MergeMethod,
    get_method,
    register,
    resolve_method,
)


def discover() -> None:
    """Import every module of this package not imported yet (each registers its methods)."""
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except Exception as exc:
            raise ImportError(f"merge method module {__name__}.{module}: {exc}") from exc


discover()

__all__ = [
    "METHODS",
    "WRAPPERS",
    "MergeMethod",
    "discover",
    "get_method",
    "register",
    "resolve_method",
]
