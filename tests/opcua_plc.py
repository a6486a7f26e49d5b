"""A PLC for the tests: a real asyncua Client over loopback, doing the handshake of docs/plc.md.

Waiting is done by polling a condition with a generous timeout (this machine trains in the
background), never by asserting how fast something happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncua import Client, ua

log = logging.getLogger(__name__)

NS = "urn:edge-inspect"
TIMEOUT_S = 60.0


class Plc:
    def __init__(self, url: str, camera: str = "cam1", user: str | None = None, password: str | None = None,
                 security: str | None = None) -> None:
        self.url, self.camera = url, camera
        self.client = Client(url, timeout=10)
        if user is not None:
            self.client.set_user(user)
            self.client.set_password(password or "")
        self._security = security
        self.ns = 0

    async def __aenter__(self) -> Plc:  # noqa: PYI034
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, timeout_s: float = TIMEOUT_S) -> None:
        """Connect, retrying while the box starts (a PLC does the same)."""
        if self._security:
            await self.client.set_security_string(self._security)
        end = time.monotonic() + timeout_s
        while True:
            try:
                await self.client.connect()
                break
            except (OSError, TimeoutError):
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.2)
        self.ns = await self.client.get_namespace_index(NS)

    async def close(self) -> None:
        try:
            await self.client.disconnect()
        except Exception as exc:  # noqa: BLE001 - the box may be gone already
            log.debug("disconnect failed: %s", exc)

    def node(self, path: str) -> Any:
        return self.client.get_node(ua.NodeId(f"{self.camera}.{path}", self.ns))

    async def read(self, *paths: str) -> dict[str, Any]:
        """Several values in one Read request, as the handshake asks for Result.*."""
        values = await self.client.read_values([self.node(p) for p in paths])
        return dict(zip(paths, values, strict=True))

    async def write(self, path: str, value: Any, kind: ua.VariantType) -> None:
        await self.node(path).write_value(ua.DataValue(ua.Variant(value, kind)))

    async def wait(self, cond: Callable[[dict[str, Any]], bool], *paths: str, timeout_s: float = TIMEOUT_S
                   ) -> dict[str, Any]:
        end = time.monotonic() + timeout_s
        while True:
            got = await self.read(*paths)
            if cond(got):
                return got
            if time.monotonic() > end:
                raise AssertionError(f"not within {timeout_s} s: {got}")
            await asyncio.sleep(0.05)

    async def trigger(self, part_id: str) -> int:
        """The trigger handshake; returns TriggerError (0 taken)."""
        await self.wait(lambda v: not v["TriggerAck"], "TriggerAck")
        await self.client.write_values([self.node("TriggerPartId"), self.node("Trigger")],
                                       [ua.DataValue(ua.Variant(part_id, ua.VariantType.String)),
                                        ua.DataValue(ua.Variant(True, ua.VariantType.Boolean))])
        got = await self.wait(lambda v: v["TriggerAck"] and v["TriggerAckPartId"] == part_id,
                              "TriggerAck", "TriggerAckPartId", "TriggerError")
        await self.write("Trigger", False, ua.VariantType.Boolean)
        await self.wait(lambda v: not v["TriggerAck"], "TriggerAck")
        return int(got["TriggerError"])

    async def result(self, part_id: str, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        """The presented result for part_id (ResultReady and Result.* in one read)."""
        paths = ("ResultReady", "Result.Seq", "Result.PartId", "Result.Ok", "Result.Decision", "Result.Reason",
                 "Result.ErrorCode", "Result.PDefect", "Result.Threshold", "Result.ModelId", "Result.Deadline",
                 "Result.Recipe")
        return await self.wait(lambda v: v["ResultReady"] and v["Result.PartId"] == part_id, *paths,
                               timeout_s=timeout_s)

    async def select_recipe(self, name: str) -> int:
        """Write RecipeRequest; returns RecipeError (0 taken), which the box sets inside the write request."""
        await self.write("RecipeRequest", name, ua.VariantType.String)
        return int((await self.read("RecipeError"))["RecipeError"])

    async def ack(self, seq: int) -> None:
        await self.write("ResultAckSeq", seq, ua.VariantType.Int64)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def url_of(port: int) -> str:
    return f"opc.tcp://127.0.0.1:{port}/edge-inspect"


def security_string(cert: Path, key: Path, mode: str = "SignAndEncrypt") -> str:
    return f"Basic256Sha256,{mode},{cert},{key}"
