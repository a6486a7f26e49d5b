"""Who may talk to the box's OPC UA server, and over which channel (docs/plc.md, Security).

asyncua's own pieces, configured: Basic256Sha256 (and the two newer RSA policies) signed or
signed and encrypted endpoints, the server certificate (configured, or generated once into
state_dir), client certificates checked against a trust folder, user name + password
accounts compared in constant time, and a permission rule that lets only the `plc` accounts
(or anonymous, where `anonymous: write`) send writes and method calls.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Mapping
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import UserManager

from edge.delivery.opcua_settings import OpcuaSection

log = logging.getLogger(__name__)


class OpcuaError(RuntimeError):
    """The server cannot start (port taken, unreadable certificate or password): one line naming it."""


ANON = "<anonymous>"
POLICIES = {
    "none": [ua.SecurityPolicyType.NoSecurity],
    "sign": [ua.SecurityPolicyType.Basic256Sha256_Sign, ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
             ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign],
    "sign_encrypt": [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                     ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
                     ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt],
}
_WRITES = {ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary),
           ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)}


class Accounts(UserManager):
    """User name + password from config (compared in constant time); anonymous only when allowed."""

    def __init__(self, passwords: Mapping[str, str], anonymous: bool) -> None:
        self._passwords = dict(passwords)
        self._anonymous = anonymous

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is None:
            return User(role=UserRole.User, name=ANON) if self._anonymous else None
        want = self._passwords.get(username)
        given = password.decode() if isinstance(password, bytes) else (password or "")
        if want is None or not hmac.compare_digest(want.encode(), given.encode()):
            log.warning("opcua login refused", extra={"username": username[:64]})
            return None
        return User(role=UserRole.User, name=username)


class Rules(SimpleRoleRuleset):
    """asyncua's roles, and writes (and method calls) only for the accounts that may write."""

    def __init__(self, writers: set[str]) -> None:
        super().__init__()
        self._writers = writers

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        if action_type_id in _WRITES and user.name not in self._writers:
            return False
        return bool(super().check_validity(user, action_type_id, body))


async def secure(server: Server, s: OpcuaSection, app_uri: str) -> None:
    """Endpoints, identity tokens, write permission and certificates as the section says."""
    writers = {u.name for u in s.users if u.role == "plc"} | ({ANON} if s.anonymous == "write" else set())
    policies = [p for name in s.security for p in POLICIES[name]]
    server.set_security_policy(policies, permission_ruleset=Rules(writers))
    tokens: list[type] = [ua.UserNameIdentityToken]
    if s.anonymous != "none":
        tokens.append(ua.AnonymousIdentityToken)
    server.set_identity_tokens(tokens)
    if any(name != "none" for name in s.security):
        await _certificate(server, s, app_uri)


async def _certificate(server: Server, s: OpcuaSection, app_uri: str) -> None:
    """The configured certificate, or one generated once (a PLC must trust it: docs/plc.md)."""
    cert, key = s.certificate_file, s.private_key_file
    if cert is None or key is None:
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        s.state_dir.mkdir(parents=True, exist_ok=True)
        cert, key = s.state_dir / "server-cert.der", s.state_dir / "server-key.pem"
        await setup_self_signed_certificate(key, cert, app_uri, socket.gethostname(),
                                            [ExtendedKeyUsageOID.SERVER_AUTH],
                                            {"commonName": f"edge-inspect {s.camera}"})
        key.chmod(0o600)
    try:
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
    except (OSError, ValueError) as exc:
        raise OpcuaError(f"opcua.certificate_file {cert}: {exc}") from None
    if s.trusted_clients is not None:
        opts = CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        store = TrustStore([s.trusted_clients], [])
        try:
            await store.load()
        except (OSError, ValueError) as exc:
            raise OpcuaError(f"opcua.trusted_clients {s.trusted_clients}: only certificates belong there: "
                             f"{exc}") from None
        server.set_certificate_validator(CertificateValidator(opts, store))  # type: ignore[arg-type]
