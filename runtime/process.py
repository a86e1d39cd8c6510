"""Process helpers shared by the fleet supervisor and the nodes' worker processes."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent_hook"]


def die_with_parent_hook() -> Callable[[], None] | None:
    """A hook that asks Linux to SIGTERM the calling process when its parent dies.

    Run in a child (as a pre-exec hook, or right after a fork): without it, a
    SIGKILLed `edgeshield up` or node parent would leave its children running, since
    they sit in their own sessions or keep the shared port. Elsewhere there is no such
    call and this returns None.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return hook
