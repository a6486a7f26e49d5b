"""Test helpers: a real Mosquitto on a free loopback port, and a v5-refusing proxy.

`Mosquitto` can be stopped and started again on the *same* port, which is how the
tests simulate a broker outage. `V311OnlyProxy` answers an MQTT 5 CONNECT the way a
3.1.1-only broker must ([MQTT-3.1.2-2]: CONNACK return code 1, then close) and
forwards everything else to a real broker, to exercise the "auto" fallback.
"""

from __future__ import annotations

import os
import pwd
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def have_mosquitto() -> bool:
    return os.access(MOSQUITTO, os.X_OK)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 5.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port (or the process dies)."""
    end = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}") from None
            if time.monotonic() > end:
                raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.02)



def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def make_server_certs(d: Path) -> None:
    """A test CA (d/ca.pem, ca.key) and a localhost/127.0.0.1 server certificate it signed
    (d/server.pem, server.key), valid for two days."""
    openssl("req", "-x509", *EC_KEY, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2",
            "-subj", "/CN=edge-test-ca")
    openssl("req", *EC_KEY, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-out", str(d / "server.pem"), "-days", "2", "-extfile", str(d / "ext.cnf"))


class Mosquitto:
    """A private mosquitto: config and data in `workdir`, same port across restarts."""

    def __init__(self, workdir: Path, *, persistence: bool = False, port: int | None = None,
                 allow_anonymous: bool = True, password_file: Path | None = None,
                 tls: tuple[Path, Path, Path] | None = None, extra: str = "") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            f"log_dest file {self.log_path}",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "connection_messages true",
        ]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        else:
            lines += ["persistence false"]
        if password_file is not None:
            lines += [f"password_file {password_file}"]
        if tls is not None:
            ca, cert, key = tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        if extra:
            lines += [extra]
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 5.0) -> Mosquitto:
        if self.running:
            return self
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port(self.port, timeout, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            err = ""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read().decode(errors="replace")
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {exc}\n{err}\n{self.log()}") from None
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (mosquitto saves its persistence file) and wait."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stop()

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _Proxy:
    """A loopback TCP proxy to the broker; subclasses decide what happens to the bytes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.connections = 0
        self._lsock = socket.create_server(("127.0.0.1", self.port))
        self._lsock.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> Self:
        self._accept.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._accept.join(2)
        self._lsock.close()
        for t in self._threads:
            t.join(2)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


class V311OnlyProxy(_Proxy):
    """TCP proxy in front of a broker that refuses MQTT 5 like a 3.1.1-only broker."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.refused_v5 = 0
        self.accepted_v311 = 0

    @staticmethod
    def _read_exact(sock: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def _handle(self, conn: socket.socket) -> None:
        up: socket.socket | None = None
        try:
            conn.settimeout(5)
            head = self._read_exact(conn, 1)
            length, mult, raw_len = 0, 1, b""
            while True:
                b = self._read_exact(conn, 1)
                raw_len += b
                length += (b[0] & 0x7F) * mult
                mult *= 128
                if not b[0] & 0x80:
                    break
            body = self._read_exact(conn, length)
            name_len = int.from_bytes(body[:2], "big")
            level = body[2 + name_len]
            if level == 5:
                self.refused_v5 += 1
                conn.sendall(b"\x20\x02\x00\x01")  # CONNACK, unacceptable protocol version
                return
            self.accepted_v311 += 1
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            up.sendall(head + raw_len + body)
            conn.settimeout(None)
            up.settimeout(None)
            sel = selectors.DefaultSelector()
            sel.register(conn, selectors.EVENT_READ, up)
            sel.register(up, selectors.EVENT_READ, conn)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ConnectionError):
            return
        finally:
            conn.close()
            if up is not None:
                up.close()


class StallProxy(_Proxy):
    """TCP proxy whose forwarding can be frozen: the network stalls without a disconnect
    (a switch dropping packets, a saturated link). Sockets stay open; bytes are held."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.flowing = threading.Event()
        self.flowing.set()

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def stop(self) -> None:
        self.flowing.set()
        super().stop()

    def _handle(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            conn.close()
            return
        sel = selectors.DefaultSelector()
        sel.register(conn, selectors.EVENT_READ, up)
        sel.register(up, selectors.EVENT_READ, conn)
        try:
            while not self._stop.is_set():
                if not self.flowing.is_set():  # hold everything; the peers see silence
                    self.flowing.wait(0.2)
                    continue
                for key, _ in sel.select(timeout=0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            conn.close()
            up.close()
