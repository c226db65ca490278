"""Name the daemon ``runnerd`` in ``ps`` and ``top`` instead of ``python3 -m …``.

Two places hold a process's name on Linux: the kernel's 15-byte ``comm``
(``top``, ``ps -e``, ``pgrep``), set with ``prctl(PR_SET_NAME)``, and the
argument area shown as the command line (``ps -f``), which ``setproctitle``
rewrites in place.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import setproctitle

_PR_SET_NAME = 15  # <linux/prctl.h>


def set_title(name: str, args: list[str]) -> None:
    """``comm`` becomes ``name``; the command line ``name args…``. Threads started
    later inherit ``comm`` from this (the main) thread."""
    setproctitle.setproctitle(" ".join([name, *args]))
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
