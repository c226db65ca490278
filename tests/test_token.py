"""ipc.token: setting the cancel token never waits for the turn's process.

``multiprocessing.Event.set()`` waits until every sleeping waiter has woken, so it
hung on a stopped or dead turn; both cases here failed with it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import pytest
from conftest import wait_for

from ipc.token import CancelToken, new_token

CTX = multiprocessing.get_context("forkserver")


def _waiter(token: CancelToken) -> None:
    token.wait()


def _set_within(token: CancelToken, seconds: float) -> bool:
    """Whether ``token.set()`` returned within ``seconds`` (run on a thread: it may hang)."""
    setter = threading.Thread(target=token.set, daemon=True)
    setter.start()
    setter.join(seconds)
    return not setter.is_alive()


def _sleeping(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "S"


@pytest.mark.timeout(30)
def test_set_does_not_wait_for_a_stopped_waiter_which_then_wakes() -> None:
    token = new_token(CTX)
    child = CTX.Process(target=_waiter, args=(token,))
    child.start()
    try:
        assert child.pid is not None
        wait_for(lambda: _sleeping(child.pid))  # in wait() by now, or about to be
        os.kill(child.pid, signal.SIGSTOP)
        assert _set_within(token, 5.0), "set() waited for a stopped process"
        os.kill(child.pid, signal.SIGCONT)
        child.join(10)
        assert child.exitcode == 0  # the set made while it was stopped still woke it
    finally:
        if child.is_alive():
            child.kill()
            child.join(10)


@pytest.mark.timeout(30)
def test_set_does_not_wait_for_a_waiter_that_died() -> None:
    token = new_token(CTX)
    child = CTX.Process(target=_waiter, args=(token,))
    child.start()
    assert child.pid is not None
    wait_for(lambda: _sleeping(child.pid))
    child.kill()
    child.join(10)
    assert _set_within(token, 5.0), "set() waited for a dead process"
