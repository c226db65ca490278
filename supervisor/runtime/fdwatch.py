"""The relay's wait set: every live turn's descriptors, registered once with epoll.

The relay used to rebuild a poll set of every turn's descriptors on each wait
(``multiprocessing.connection.wait``): O(live turns) of work per event. Here a
turn's descriptors are registered when what it waits on changes, and dropped
before they are closed (a closed descriptor's number is reused by the next turn).
"""

from __future__ import annotations

import selectors
from typing import Generic, TypeVar

T = TypeVar("T")


class FdWatch(Generic[T]):
    """Descriptors grouped by owner (a turn id); ``wait`` names the owner and the kind of each ready one."""

    def __init__(self, wake_fd: int) -> None:
        self._sel = selectors.DefaultSelector()
        self._sel.register(wake_fd, selectors.EVENT_READ, None)  # commands: drained by the caller every step
        self._owned: dict[str, dict[int, str]] = {}  # owner key -> fd -> kind

    def sync(self, key: str, owner: T, wanted: dict[int, str]) -> None:
        """Watch exactly ``wanted`` (fd -> kind) for ``key``."""
        have = self._owned.get(key, {})
        if have == wanted:
            return
        for fd in have.keys() - wanted.keys():
            self._sel.unregister(fd)
        for fd, kind in wanted.items():
            if have.get(fd) == kind:
                continue
            if fd in have:
                self._sel.modify(fd, selectors.EVENT_READ, (owner, kind))
            else:
                self._sel.register(fd, selectors.EVENT_READ, (owner, kind))
        if wanted:
            self._owned[key] = dict(wanted)
        else:
            self._owned.pop(key, None)

    def drop(self, key: str) -> None:
        """Stop watching ``key``'s descriptors; call before closing them."""
        for fd in self._owned.pop(key, {}):
            self._sel.unregister(fd)

    def wait(self, timeout: float) -> tuple[list[tuple[T, str]], bool]:
        """(owner, kind) of every ready descriptor, and whether the wake-up pipe was ready."""
        ready = [key.data for key, _ in self._sel.select(timeout)]
        fds = [data for data in ready if data is not None]
        return fds, len(fds) < len(ready)

    def close(self) -> None:
        self._sel.close()
