"""The `opcua` section of config.yaml (edge.config composes it): the PLC's server on the box.

Off by default. Secure by default once on: only the signed-and-encrypted endpoint, no
anonymous access, and a configuration in which no account can write (so no PLC could ever
trigger) is refused at load with its line instead of running deaf.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge.config_file import Strict

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


class OpcuaUser(Strict):
    name: str = Field(description="the account's user name")
    role: Literal["plc", "monitor"] = Field(description="plc: reads and writes the PLC's nodes; monitor: reads only")
    password_file: Path | None = Field(None, description="its password, read from this file at start")
    password_env: str | None = Field(None, description="... or from this environment variable")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or len(v) > 64 or not v.isprintable():
            raise ValueError("1..64 printable characters")
        return v

    @model_validator(mode="after")
    def _one_password(self) -> OpcuaUser:
        if (self.password_file is None) == (self.password_env is None):
            raise ValueError("give password_file or password_env (one of them)")
        return self

    def password(self) -> str:
        """Read at start; OSError/KeyError say which file or variable."""
        if self.password_file is not None:
            return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        value = os.environ.get(str(self.password_env))
        if value is None:
            raise KeyError(f"environment variable {self.password_env} is not set")
        return value


class OpcuaSection(Strict):
    enabled: bool = Field(False, description="serve the PLC handshake over OPC UA (docs/plc.md)")
    listen: str = Field("127.0.0.1:4840", description="host:port; 0.0.0.0:4840 serves the plant network")
    camera: str = Field("cam1", description="the camera's object in the node tree: ns=<namespace>;s=<camera>.*")
    namespace: str = Field("urn:edge-inspect", description="namespace URI of the box's nodes")
    security: list[Literal["none", "sign", "sign_encrypt"]] = Field(
        ["sign_encrypt"], min_length=1, description="endpoints offered (Basic256Sha256); none is for a bench only")
    certificate_file: Path | None = Field(None, description="server certificate (DER or PEM); null = generated "
                                          "once into state_dir")
    private_key_file: Path | None = Field(None, description="its private key (PEM), with certificate_file")
    trusted_clients: Path | None = Field(None, description="folder of trusted client certificates; null = any "
                                         "client certificate opens a secure channel, the accounts decide")
    users: list[OpcuaUser] = Field([], description="accounts (user name + password)")
    anonymous: Literal["none", "read", "write"] = Field("none", description="what a client without an account "
                                                        "may do")
    state_dir: Path = Field(Path("state/opcua"), description="the handshake record and a generated certificate")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or not v.isprintable():
            raise ValueError(f"{v!r}: expected host:port, e.g. 0.0.0.0:4840")
        return v

    @field_validator("camera")
    @classmethod
    def _camera(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r}: a letter, then up to 31 letters, digits, '_' or '-' (it is part of every NodeId)")
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not v or len(v) > 256 or not v.isprintable() or " " in v:
            raise ValueError("a URI without spaces, at most 256 characters")
        return v

    @model_validator(mode="after")
    def _usable(self) -> OpcuaSection:
        if (self.certificate_file is None) != (self.private_key_file is None):
            raise ValueError("certificate_file and private_key_file go together")
        names = [u.name for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError("users: a user name appears twice")
        if self.enabled and self.anonymous != "write" and not any(u.role == "plc" for u in self.users):
            raise ValueError("no account can write, so no PLC could trigger: add a user with role plc "
                             "(or anonymous: write, on a bench only)")
        if self.users and "none" in self.security:
            raise ValueError("accounts need a secure channel: a password over security none crosses the network "
                             "in clear; remove none (sign_encrypt is the default)")
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)
