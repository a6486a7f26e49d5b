"""systemd's sd_notify protocol over $NOTIFY_SOCKET (a unix datagram socket), no dependency.

Silently a no-op when the daemon does not run under systemd (NOTIFY_SOCKET unset).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._addr: str | bytes | None = None
        self._sock: socket.socket | None = None
        if addr:
            # '@' names an abstract socket: leading NUL byte on the wire.
            self._addr = b"\0" + addr[1:].encode() if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: object) -> bool:
        """notify(READY=1, STATUS='...') -> 'READY=1\\nSTATUS=...'; False if not sent."""
        if self._sock is None or self._addr is None:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(msg, self._addr)
            return True
        except OSError as exc:
            log.warning("sd_notify failed", extra={"error": str(exc)})
            return False

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s() -> float | None:
    """Half of systemd's WATCHDOG_USEC, the recommended ping period; None when off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
