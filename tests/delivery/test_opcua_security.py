"""OPC UA security as configured: only signed and encrypted channels, from trusted client
certificates, with accounts; a monitor reads, only the PLC's account writes, and nobody
writes the box's own nodes. A real asyncua client against the station over loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from broker import free_port
from opcua_plc import Plc, run, security_string, url_of

from edge.delivery import opcua_nodes as nodes
from edge.delivery.journal import Journal
from edge.delivery.opcua_settings import OpcuaSection

asyncua = pytest.importorskip("asyncua")
from asyncua import ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge.delivery.opcua import OpcuaStation

APP_URI = "urn:edge-test:plc"


def client_cert(d: Path, name: str, keys: Path) -> tuple[Path, Path]:
    cert, key = d / f"{name}.der", keys / f"{name}.pem"
    run(setup_self_signed_certificate(key, cert, APP_URI, "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH],
                                      {"commonName": name}))
    return cert, key


def test_only_trusted_encrypted_accounts_get_in_and_only_the_plc_writes(tmp_path: Path) -> None:
    (tmp_path / "trusted").mkdir()
    cert, key = client_cert(tmp_path / "trusted", "plc", tmp_path)
    stranger = client_cert(tmp_path, "stranger", tmp_path)
    (tmp_path / "plc.pw").write_text("s3cret-plc\n")
    (tmp_path / "mon.pw").write_text("s3cret-mon\n")
    port = free_port()
    section = OpcuaSection(enabled=True, listen=f"127.0.0.1:{port}", security=["sign_encrypt"],
                           trusted_clients=tmp_path / "trusted", state_dir=tmp_path / "opcua", users=[
                               {"name": "plc", "role": "plc", "password_file": tmp_path / "plc.pw"},
                               {"name": "mon", "role": "monitor", "password_file": tmp_path / "mon.pw"}])
    taken: list[str] = []
    journal = Journal(tmp_path / "journal.sqlite")
    station = OpcuaStation(section, journal, "trigger", lambda part_id, _t: taken.append(part_id) is None,
                           lambda: {"model": "0123456789ab"})
    station.start()
    secure = security_string(cert, key)

    def plc(user: str | None, password: str | None, security: str | None = secure) -> Plc:
        p = Plc(url_of(port), user=user, password=password, security=security)
        p.client.application_uri = APP_URI
        return p

    async def refused(p: Plc) -> str:
        try:
            await p.connect(timeout_s=0)
        except (ua.UaError, TimeoutError, OSError) as exc:
            return type(exc).__name__
        finally:
            await p.close()
        raise AssertionError("connected, but should have been refused")

    async def scenario() -> None:
        # No account, a wrong password, no encryption, an untrusted certificate: never a session.
        whys = [await refused(who) for who in (
            plc(None, None), plc("plc", "wrong"), plc("plc", "s3cret-plc", security=None),
            plc("plc", "s3cret-plc", security=security_string(*stranger)))]
        # (UaError: the server offers no endpoint without security)
        assert whys == ["BadIdentityTokenRejected", "BadUserAccessDenied", "UaError", "BadCertificateUntrusted"]
        async with plc("mon", "s3cret-mon") as mon:
            assert (await mon.read("Status.ModelId"))["Status.ModelId"] == "0123456789ab"
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                await mon.write("Trigger", True, ua.VariantType.Boolean)
        async with plc("plc", "s3cret-plc") as p:
            assert await p.trigger("S-1") == nodes.TRIGGER_OK
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied|BadNotWritable"):
                await p.write("ResultReady", True, ua.VariantType.Boolean)  # the box's node, not the PLC's

    try:
        run(scenario())
    finally:
        station.stop()
        journal.close()
    assert taken == ["S-1"]
