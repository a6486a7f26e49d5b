"""A local mosquitto on a free loopback port, for the demo when no broker is configured."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edge.errors import StartError


def mosquitto_path() -> str | None:
    """The mosquitto binary (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


class LocalBroker:
    """`persistence`: keep sessions and queued QoS 1 messages across stop/start (soak runs)."""

    def __init__(self, persistence: bool = False) -> None:
        self.port = 0
        self.persistence = persistence
        self._proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    def start(self, timeout_s: float = 5.0) -> None:
        """Start on a free port; a restart after stop() reuses the same port and data."""
        exe = mosquitto_path()
        if exe is None:
            raise StartError("no broker configured (mqtt.host) and mosquitto is not installed: "
                             "apt-get install mosquitto, or set mqtt.host")
        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="edge-broker-")
        conf = Path(self._dir.name) / "mosquitto.conf"
        keep = f"persistence true\npersistence_location {self._dir.name}/\n" if self.persistence else "persistence false\n"
        # Started as root, mosquitto would switch to its own user and lose access to our files.
        user = pwd.getpwuid(os.getuid()).pw_name
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {user}\n{keep}")
        self._proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise StartError(f"local mosquitto did not start on port {self.port}")

    def stop(self, cleanup: bool = True) -> None:
        """Stop mosquitto; cleanup=False keeps port and data for a restart."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if cleanup and self._dir is not None:
            self._dir.cleanup()
            self._dir = None
            self.port = 0
