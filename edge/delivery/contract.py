"""The MQTT contract between the edge daemon and the sorting gate: topics and payloads.

The publisher, the reference gate and the tests all use this module, so the wire
format has one definition (docs/mqtt.md explains it for the gate programmer).
Validation is hand-written and strict about types (a bool is not a number, NaN is not
a probability) because a malformed message must be refused, never half-understood.
Stdlib only: the journal and a gate on a small PLC-side box must not need pydantic.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edge.timestamps import iso

Payload = bytes | bytearray | str
DEFAULT_PREFIX = "casting/line1/cam1"
DECISIONS = ("accept", "reject")
MAX_PART_ID_LEN = 128
DEFAULT_TRIGGER_MAX_BYTES = 1024


class ContractError(ValueError):
    """A payload that does not follow the contract; the message says which field."""


@dataclass(frozen=True)
class Topics:
    """Every topic under one prefix, so no module spells a topic by hand."""

    prefix: str

    @property
    def decision(self) -> str:
        return f"{self.prefix}/decision"

    @property
    def late(self) -> str:
        return f"{self.prefix}/decision/late"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def trigger(self) -> str:
        return f"{self.prefix}/trigger"

    @property
    def recipe(self) -> str:
        """The recipe in force (retained): what parts are judged under now."""
        return f"{self.prefix}/recipe"

    @property
    def recipe_set(self) -> str:
        """Requests to switch the recipe (from the PLC or line controller; never retained)."""
        return f"{self.prefix}/recipe/set"

    @property
    def recipe_reply(self) -> str:
        """One answer per request on recipe_set: taken, or refused with why."""
        return f"{self.prefix}/recipe/reply"

    @property
    def shadow(self) -> str:
        """A candidate bundle's disagreements with the live one (shadow mode): never for a gate."""
        return f"{self.prefix}/shadow"


def check_prefix(prefix: str) -> str:
    """A prefix must be a plain topic: wildcards or stray slashes would subscribe/publish elsewhere."""
    if (not prefix or any(c in prefix for c in "#+\0") or prefix.startswith("/") or prefix.endswith("/")
            or "//" in prefix):
        raise ContractError(f"{prefix!r} is not a valid topic prefix (no wildcards, no empty levels, "
                            "no leading/trailing '/')")
    return prefix


def _show(value: Any, limit: int = 40) -> str:
    """A short repr for error messages: a payload's value may be huge (an int past str()'s digit limit)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[:limit] + "..."


def _finite_float(value: numbers.Real) -> float:
    """float(value), or inf for an int no float can hold, so one isfinite() check refuses both."""
    try:
        return float(value)
    except (OverflowError, ValueError):
        return math.inf


EPOCH_SECONDS_MAX = 1e11  # the year 5138: a larger trigger ts is milliseconds, not seconds


def parse_ts(value: Any, field: str = "ts") -> float:
    """ISO 8601 (naive means UTC) or epoch seconds -> epoch seconds; anything else is refused."""
    if isinstance(value, bool):
        raise ContractError(f"{field}: expected an ISO 8601 time or epoch seconds, got a boolean")
    if isinstance(value, numbers.Real):
        seconds = _finite_float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ContractError(f"{field}: {_show(value)} is not a valid epoch time")
        return seconds
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return dt.timestamp()
        except (ValueError, OverflowError):
            raise ContractError(f"{field}: {value[:40]!r} is not an ISO 8601 time") from None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    raise ContractError(f"{field}: expected an ISO 8601 time or epoch seconds, got {type(value).__name__}")


def _norm_ts(value: Any, field: str) -> str:
    """parse_ts then iso: a time datetime cannot hold (year 0 or 10000+ in UTC) is a ContractError, not a crash."""
    seconds = parse_ts(value, field)
    try:
        return iso(seconds)
    except (ValueError, OverflowError, OSError):
        raise ContractError(f"{field}: {_show(value)} is outside the representable time range") from None


def check_part_id(value: Any, field: str = "part_id") -> str:
    """Part ids are short printable strings; an integer id from a PLC is accepted as its decimal text."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ContractError(f"{field}: expected a string, got {type(value).__name__}")
    text = str(value)
    if not text or len(text) > MAX_PART_ID_LEN:
        raise ContractError(f"{field}: must be 1..{MAX_PART_ID_LEN} characters, got {len(text)}")
    if not text.isprintable():
        raise ContractError(f"{field}: contains control characters")
    return text


def _number(d: Mapping[str, Any], key: str, *, lo: float | None = None, hi: float | None = None,
            optional: bool = False) -> float | None:
    v = d.get(key)
    if v is None:
        if optional:
            return None
        raise ContractError(f"{key}: missing")
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(_finite_float(v)):
        raise ContractError(f"{key}: expected a finite number, got {_show(v, 80)}")
    v = float(v)  # numpy scalars (np.float32 is not a float) become plain floats for JSON
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ContractError(f"{key}: {v!r} is outside [{lo}, {hi}]")
    return float(v)


def _string(d: Mapping[str, Any], key: str, max_len: int = 256) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise ContractError(f"{key}: expected a non-empty string of at most {max_len} characters")
    return v


def normalize_decision(decision: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Check a decision from the daemon and return the payload fields (without seq).

    Fills `ts` with `now` when absent and writes every time as contract ISO 8601, so
    what is journaled is exactly what the gate will read. Unknown extra keys pass
    through (additive fields never break a gate that ignores what it does not know).
    """
    if not isinstance(decision, Mapping):
        raise ContractError(f"a decision must be a mapping, got {type(decision).__name__}")
    out: dict[str, Any] = {}
    out["part_id"] = check_part_id(decision.get("part_id"))
    out["ts"] = _norm_ts(decision["ts"], "ts") if decision.get("ts") is not None else iso(now)
    out["frame_ts"] = _norm_ts(decision["frame_ts"], "frame_ts") if decision.get("frame_ts") is not None else None
    if decision.get("decision") not in DECISIONS:
        raise ContractError(f"decision: expected one of {DECISIONS}, got {decision.get('decision')!r}"[:120])
    out["decision"] = decision["decision"]
    out["p_defect"] = _number(decision, "p_defect", lo=0.0, hi=1.0, optional=True)
    out["threshold"] = _number(decision, "threshold", lo=0.0, hi=1.0, optional=True)
    out["reason"] = _string(decision, "reason")
    out["model"] = _string(decision, "model", 128)
    out["latency_ms"] = _number(decision, "latency_ms", lo=0.0, optional=True)
    out.update((k, v) for k, v in decision.items() if k not in out and k != "seq")  # seq: the journal's
    try:
        dumps(out)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"decision is not JSON-serialisable: {exc}"[:160]) from None
    return out


def dumps(payload: Mapping[str, Any]) -> str:
    """Compact JSON; NaN/inf refused so every payload is standard JSON a PLC can parse."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _reject_constant(name: str) -> Any:
    raise ContractError(f"{name} is not valid JSON")


def loads(payload: Payload, max_bytes: int | None = None) -> dict[str, Any]:
    """A JSON object from a payload, refusing oversize, non-UTF-8, NaN and non-objects."""
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    if max_bytes is not None and len(raw) > max_bytes:
        raise ContractError(f"payload of {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ContractError("payload is not UTF-8") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ContractError:
        raise
    except (ValueError, RecursionError) as exc:  # ValueError also covers an int past the str->int digit limit
        raise ContractError(f"payload is not JSON: {exc}"[:120]) from None
    if not isinstance(obj, dict):
        raise ContractError(f"payload must be a JSON object, got {type(obj).__name__}")
    return obj


@dataclass(frozen=True)
class Trigger:
    """A validated trigger: which part to inspect, and when the gate saw it.

    `received_mono` is this host's time.monotonic() at receipt (for wait timing);
    `ts` is the sender's own time, epoch seconds, when it gave one.
    """

    part_id: str
    ts: float | None
    received_ts: float
    received_mono: float
    recipe: str | None = None  # the recipe the part is to be judged under; None: the one in force

    def __getitem__(self, key: str) -> Any:
        """trigger["part_id"] works too, for callers that treat a trigger as its JSON payload."""
        if key not in ("part_id", "ts", "received_ts", "received_mono", "recipe"):
            raise KeyError(key)
        return getattr(self, key)


def parse_trigger(payload: Payload, received_ts: float, received_mono: float,
                  max_bytes: int = DEFAULT_TRIGGER_MAX_BYTES) -> Trigger:
    obj = loads(payload, max_bytes)
    part_id = check_part_id(obj.get("part_id"))
    ts = parse_ts(obj["ts"], "ts") if obj.get("ts") is not None else None
    if ts is not None and ts > EPOCH_SECONDS_MAX:
        # Epoch milliseconds (a common PLC habit) would read as a time far in the future and
        # pass any age check: refused, so the trigger is dropped and the gate rejects the part.
        raise ContractError(f"ts: {_show(obj['ts'])} is not epoch seconds (milliseconds?); send seconds or ISO 8601")
    recipe = check_recipe(obj["recipe"]) if obj.get("recipe") is not None else None
    return Trigger(part_id, ts, received_ts, received_mono, recipe)


MAX_RECIPE_LEN = 64
MAX_REQUEST_ID_LEN = 128


def check_recipe(value: Any, field: str = "recipe") -> str:
    """A recipe name as sent: a printable string of 1..64 characters (whether it is configured is
    the daemon's question, answered with a reason)."""
    if not isinstance(value, str) or not value or len(value) > MAX_RECIPE_LEN or not value.isprintable():
        raise ContractError(f"{field}: expected a recipe name, 1..{MAX_RECIPE_LEN} printable characters, "
                            f"got {_show(value)}")
    return value


@dataclass(frozen=True)
class RecipeRequest:
    """A request on {prefix}/recipe/set: switch to `recipe`; `id` (optional) is echoed in the reply."""

    recipe: str
    id: str | None


def parse_recipe_request(payload: Payload, max_bytes: int = DEFAULT_TRIGGER_MAX_BYTES) -> RecipeRequest:
    obj = loads(payload, max_bytes)
    rid = obj.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))
                            or not 0 < len(str(rid)) <= MAX_REQUEST_ID_LEN or not str(rid).isprintable()):
        raise ContractError(f"id: expected a string of 1..{MAX_REQUEST_ID_LEN} printable characters, got {_show(rid)}")
    return RecipeRequest(check_recipe(obj.get("recipe")), None if rid is None else str(rid))


def parse_decision(payload: Payload, max_bytes: int = 64 * 1024) -> dict[str, Any]:
    """A decision as the gate receives it: the checks of normalize_decision plus `seq`."""
    obj = loads(payload, max_bytes)
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ContractError(f"seq: expected a positive integer, got {seq!r}"[:120])
    if obj.get("ts") is None:
        raise ContractError("ts: missing")
    out = normalize_decision(obj, now=0.0)
    out["seq"] = seq
    return out


def parse_status(payload: Payload, max_bytes: int = 64 * 1024) -> dict[str, Any]:
    """A status message; anything but a well-formed `online` counts as not online."""
    obj = loads(payload, max_bytes)
    if obj.get("state") not in ("online", "offline"):
        raise ContractError(f"state: expected 'online' or 'offline', got {obj.get('state')!r}"[:120])
    return obj
