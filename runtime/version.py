"""The installed edgeshield's version, read once from the package metadata."""

from __future__ import annotations

import functools
from importlib import metadata

__all__ = ["version"]


@functools.cache
def version() -> str:
    """The version of the installed package ("unknown" when run from a bare tree)."""
    try:
        return metadata.version("edgeshield")
    except metadata.PackageNotFoundError:
        return "unknown"
