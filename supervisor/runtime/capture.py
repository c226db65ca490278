"""A turn's stdout and stderr: drained by the relay, kept up to a byte cap.

An agent that writes megabytes to stdout can neither block on a full pipe nor
fill the journal or the disk: the first ``limit`` bytes land in
``<id>.output``, the rest is only counted.
"""

from __future__ import annotations

import os
from multiprocessing.connection import Connection
from pathlib import Path


class OutputSink:
    def __init__(self, conn: Connection, path: Path, limit: int) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self.path = path
        self.limit = limit
        self.kept = 0
        self.dropped = 0
        self.eof = False
        self._file: int | None = None

    def drain(self, chunk: int = 1 << 16, rounds: int = 16) -> None:
        """Read what is there now (bounded, so one chatty turn cannot starve the relay)."""
        if self.eof:
            return
        for _ in range(rounds):
            try:
                data = os.read(self.fd, chunk)
            except BlockingIOError:
                return
            if not data:
                self.eof = True
                return
            room = max(0, self.limit - self.kept)
            if room:
                try:
                    if self._file is None:
                        self._file = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                                             0o600)
                    os.write(self._file, data[:room])
                except OSError:
                    room = 0  # a full or read-only disk: count it, never stop the relay
                self.kept += min(room, len(data))
            self.dropped += len(data) - min(room, len(data))

    def close(self) -> None:
        self.drain()
        self.eof = True
        if self._file is not None:
            os.close(self._file)
            self._file = None
        self.conn.close()
