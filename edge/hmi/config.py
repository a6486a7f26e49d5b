"""The page's configuration: a typed schema like the daemon's (unknown keys are errors, every
problem named by file:line), read with the same bounded YAML reader.

The page runs beside the daemon and only reads what the daemon leaves behind, so its config
names the daemon's journal, audit and collect folders and broker again; relative paths are
relative to the file's folder. It binds loopback unless told otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from edge.config_file import ConfigError, Strict, key_text, one_line, read_bytes, read_yaml, short
from edge.delivery.contract import ContractError, check_prefix

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class Listen(Strict):
    host: str = Field("127.0.0.1", description="bind address; 127.0.0.1 keeps the page on this box")
    port: int = Field(8088, ge=1, le=65535)
    cert_file: Path | None = Field(None, description="TLS certificate (PEM); with key_file the page is HTTPS only")
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> Listen:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (the page's TLS certificate and its key)")
        if not self.host.strip():
            raise ValueError("host: must not be empty (127.0.0.1 for this box only)")
        return self

    @property
    def tls(self) -> bool:
        return self.cert_file is not None


class Tls(Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


class Mqtt(Strict):
    """Where the daemon's retained status is read from (subscribe only: the page never publishes)."""

    host: str | None = Field(None, description="null = no broker: health comes from the journal alone")
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = "casting/line1/cam1"
    username: str | None = None
    password_file: Path | None = None
    tls: Tls | None = None

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        try:
            check_prefix(v)
        except ContractError as exc:
            raise ValueError(str(exc)) from None
        return v


class Shift(Strict):
    name: str = Field(min_length=1, max_length=40)
    start: str = Field(description="HH:MM local time; a shift lasts until the next one starts")

    @field_validator("start")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError(f"must be HH:MM (00:00 to 23:59), got {v!r}")
        return v

    @property
    def minute(self) -> int:
        h, m = self.start.split(":")
        return int(h) * 60 + int(m)


DEFAULT_SHIFTS = (Shift(name="early", start="06:00"), Shift(name="late", start="14:00"),
                  Shift(name="night", start="22:00"))


class HmiConfig(Strict):
    listen: Listen = Listen()
    users_file: Path = Field(Path("hmi-users"), description="name:role:scrypt hash per line (edge-hmi passwd)")
    journal: Path = Field(Path("state/journal.sqlite"), description="the daemon's journal, opened read-only")
    audit_dir: Path | None = Path("state/audit")
    collect_dir: Path | None = None
    labels_dir: Path = Field(Path("state/labels"), description="the labelled folder review verdicts go to "
                             "(what edge-train adapt reads)")
    state_dir: Path = Field(Path("state/hmi"), description="the page's own files: its index of the journal, "
                            "its review log")
    mqtt: Mqtt = Mqtt()
    shifts: tuple[Shift, ...] = DEFAULT_SHIFTS
    timezone: str | None = Field(None, description="IANA name for hours and shifts; null = the box's local time")
    session_hours: float = Field(12.0, gt=0, le=24 * 7)
    poll_s: float = Field(0.5, gt=0, le=10, description="how often the journal is read for new decisions")
    log_level: str = "INFO"

    @field_validator("shifts")
    @classmethod
    def _shifts(cls, v: tuple[Shift, ...]) -> tuple[Shift, ...]:
        if not v:
            raise ValueError("at least one shift (a line that never stops has one: {name: all, start: '00:00'})")
        starts = [s.start for s in v]
        if len(set(starts)) != len(starts):
            raise ValueError(f"two shifts start at the same time ({', '.join(sorted(starts))})")
        if len({s.name for s in v}) != len(v):
            raise ValueError("shift names must differ")
        return tuple(sorted(v, key=lambda s: s.minute))

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Europe/Berlin)") from None
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("one of DEBUG, INFO, WARNING, ERROR")
        return v.upper()


def _resolve(cfg: HmiConfig, base: Path) -> HmiConfig:
    def fix(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

    tls = cfg.mqtt.tls
    if tls is not None:
        tls = tls.model_copy(update={k: fix(getattr(tls, k)) for k in ("ca_file", "cert_file", "key_file")})
    return cfg.model_copy(update={
        "listen": cfg.listen.model_copy(update={"cert_file": fix(cfg.listen.cert_file),
                                                "key_file": fix(cfg.listen.key_file)}),
        "users_file": fix(cfg.users_file), "journal": fix(cfg.journal), "audit_dir": fix(cfg.audit_dir),
        "collect_dir": fix(cfg.collect_dir), "labels_dir": fix(cfg.labels_dir), "state_dir": fix(cfg.state_dir),
        "mqtt": cfg.mqtt.model_copy(update={"password_file": fix(cfg.mqtt.password_file), "tls": tls}),
    })


def parse(raw: bytes, source: str, base: Path) -> HmiConfig:
    """The config in `raw`, or ConfigError listing every problem as `source:line: key: why`."""
    data, lines, repeats = read_yaml(raw, source)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the top level must be a mapping (listen, journal, shifts, ...)"])
    problems = [(line, f"{source}:{line}: {key_text(path)}: repeated key (first on line {was})")
                for path, was, line in repeats]
    cfg: HmiConfig | None = None
    try:
        cfg = HmiConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc: tuple[Any, ...] = tuple(p for p in err["loc"] if p not in ("function-after",))
            line = next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines), None)
            msg = ("unknown key (not in the schema; check its spelling)" if err["type"] == "extra_forbidden"
                   else one_line(err["msg"]))
            got = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {short(err.get('input'))})"
            problems.append((line or 0, f"{source}:{line or '?'}: {key_text(loc) or '(top level)'}: {msg}{got}"))
    if problems or cfg is None:
        raise ConfigError([text for _, text in sorted(set(problems))])
    return _resolve(cfg, base)


def load(path: str | Path) -> HmiConfig:
    path = Path(path)
    return parse(read_bytes(path), str(path), path.absolute().parent)
