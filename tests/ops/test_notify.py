import os
import socket
from pathlib import Path

import pytest

from edge.ops.notify import Notifier, watchdog_interval_s


def test_messages_reach_a_real_notify_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    n = Notifier(path)
    assert n.enabled
    assert n.ready("inspecting")
    assert server.recv(4096) == b"READY=1\nSTATUS=inspecting"
    assert n.watchdog() and server.recv(4096) == b"WATCHDOG=1"
    assert n.stopping() and server.recv(4096) == b"STOPPING=1"
    n.close()
    server.close()


def test_disabled_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.ready("x") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval_s() is None
