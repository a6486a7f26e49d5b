"""Property tests over what arrives from outside: trigger and decision payloads, config files.

Whatever the bytes, the parsers either return a valid value or raise their own error
type with a message: never another exception, never a crash of the MQTT thread.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta, timezone

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config import ConfigError, parse
from edge.delivery.contract import (
    DEFAULT_TRIGGER_MAX_BYTES,
    ContractError,
    parse_decision,
    parse_status,
    parse_trigger,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
trigger_like = st.fixed_dictionaries({}, optional={"part_id": json_values | st.text(max_size=300), "ts": json_values})
payloads = st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()) | trigger_like.map(
    lambda d: json.dumps(d).encode())
# Times at and beyond what datetime can hold (year 1 with +14:00 is year 0 in UTC), and numbers no float can hold.
extreme_times = (st.sampled_from([1e20, 1e308, 2**63, 10**400, -(10**400), 253402300800, 253402300799.9995,
                                  "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999-14:00"])
                 | st.floats(min_value=0) | st.integers(min_value=0, max_value=10**30)
                 | st.builds(lambda d, h: d.replace(tzinfo=timezone(timedelta(hours=h))).isoformat(),
                             st.datetimes(), st.integers(-23, 23)))
decision_like = st.fixed_dictionaries(
    {"seq": st.integers(1, 9), "part_id": st.just("p1"), "decision": st.sampled_from(["accept", "reject"]),
     "reason": st.just("model"), "model": st.just("m"), "ts": extreme_times},
    optional={"frame_ts": extreme_times, "p_defect": st.just(10**400) | st.floats(0, 1),
              "latency_ms": st.just(10**400) | st.floats(0)})
gate_payloads = (payloads | decision_like.map(lambda d: json.dumps(d).encode())
                 | st.integers(4301, 6000).map(lambda n: b'{"state": "online", "seq": ' + b"9" * n + b"}"))


@settings(max_examples=400, deadline=None)
@given(payloads)
def test_trigger_parser_accepts_valid_or_raises_contract_error(payload: bytes) -> None:
    try:
        t = parse_trigger(payload, received_ts=1.0, received_mono=1.0)
    except ContractError as exc:
        assert str(exc)
        return
    assert isinstance(t.part_id, str) and 0 < len(t.part_id) <= 128
    assert t.ts is None or math.isfinite(t.ts)


@settings(max_examples=300, deadline=None)
@given(gate_payloads)
def test_gate_side_parsers_never_crash(payload: bytes) -> None:
    for parser in (parse_decision, parse_status):
        try:
            out = parser(payload)
        except ContractError as exc:
            assert str(exc)
        else:
            assert isinstance(out, dict)


@settings(max_examples=50, deadline=None)
@given(payloads.map(lambda p: p + b" " * (DEFAULT_TRIGGER_MAX_BYTES + 1)))
def test_huge_payloads_are_refused_by_size(payload: bytes) -> None:
    try:
        parse_trigger(payload, 1.0, 1.0)
    except ContractError as exc:
        assert "limit" in str(exc)
    else:
        raise AssertionError("an oversized trigger was accepted")


sections = {"model": ["bundle", "threshold", "threads"], "camera": ["source", "loop", "fps"],
            "inspect": ["mode", "locate", "roi", "inspection_line"], "mqtt": ["host", "port", "prefix", "protocol"],
            "journal": ["path", "retention_days"], "audit": ["dir", "max_mb"], "drift": ["window", "k"],
            "service": ["metrics_listen", "ready_timeout_s"], "bogus": ["x"]}
config_docs = st.dictionaries(
    st.sampled_from(sorted(sections)),
    st.one_of(json_values, st.dictionaries(st.sampled_from(sum(sections.values(), []) + ["unknown_key"]),
                                           json_values, max_size=4)),
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_docs)
def test_config_is_valid_or_every_problem_names_a_line(doc: dict) -> None:
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        parse(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems
        assert all(p.startswith("fuzz.yaml:") for p in exc.problems), exc.problems


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_as_config_gives_config_error_or_config(text: str) -> None:
    try:
        parse(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("fuzz.yaml") for p in exc.problems)
