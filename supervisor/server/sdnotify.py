"""systemd integration: sd_notify, the watchdog interval and socket activation.

The standard library is enough (the protocol is one datagram and a few
environment variables); the PyPI wrappers are stale or need libsystemd.
"""

from __future__ import annotations

import os
import socket

__all__ = ["LISTEN_FDS_START", "listen_fds", "notify", "watchdog_interval"]

# sd_listen_fds(3): passed descriptors always start right after stdio.
LISTEN_FDS_START = 3


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=..."``) to ``$NOTIFY_SOCKET``.

    Returns True if the datagram was sent. Without ``$NOTIFY_SOCKET`` (not run
    by systemd, or NotifyAccess= excludes us) this is a no-op returning False.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    if address[0] == "@":
        # Abstract namespace: systemd spells the leading NUL byte as '@'.
        address = "\0" + address[1:]
    elif address[0] != "/":
        return False  # e.g. "vsock:..." (systemd >= 254): not a unix socket we can reach
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError:
        # Readiness and watchdog pings are advisory; a missing or full socket
        # must never take the daemon down, and logging every ping would flood.
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of WatchdogSec=), or None if not asked.

    Half the interval, as sd_watchdog_enabled(3) recommends, so one late ping
    does not get the service killed.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and not _is_own_pid(pid):
        return None  # the watchdog belongs to another process (e.g. our parent)
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2


def listen_fds() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (``LISTEN_FDS``), else ``[]``.

    The descriptors are made close-on-exec and the ``LISTEN_*`` variables are
    removed from ``os.environ`` either way, so agent processes started later
    neither inherit the listening sockets nor believe they were activated.
    """
    try:
        if not _is_own_pid(os.environ.get("LISTEN_PID", "")):
            return []
        try:
            count = int(os.environ.get("LISTEN_FDS", ""))
        except ValueError:
            return []
        fds = range(LISTEN_FDS_START, LISTEN_FDS_START + max(count, 0))
        for fd in fds:
            os.set_inheritable(fd, False)
        sockets: list[socket.socket] = []
        try:
            for fd in fds:
                # fileno= alone makes Python query family/type from the kernel.
                sockets.append(socket.socket(fileno=fd))
        except OSError:
            # Not a socket (a ListenFIFO=, say): nothing here can serve it.
            for sock in sockets:
                sock.close()
            raise
        return sockets
    finally:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)


def _is_own_pid(value: str) -> bool:
    try:
        return int(value) == os.getpid()
    except ValueError:
        return False
