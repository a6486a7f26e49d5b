"""The OPC UA node tree of one camera and its error codes: what a PLC programmer configures.

One definition, used by the server (edge.delivery.opcua), the tests and docs/plc.md, so the
NodeIds a PLC is programmed against never drift from what the box serves. Every node has a
stable string NodeId `ns=<namespace>;s=<camera>.<path>`; the PLC writes only the nodes marked
writable, everything else is the box's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from edge.delivery.contract import parse_ts


@dataclass(frozen=True)
class Var:
    path: str  # below the camera object: "Trigger", "Result.PartId"
    kind: str  # Boolean | String | Int32 | Int64 | Double | DateTime
    writable: bool = False  # by the PLC
    doc: str = ""


_T = {"Boolean": ua.VariantType.Boolean, "String": ua.VariantType.String, "Int32": ua.VariantType.Int32,
      "Int64": ua.VariantType.Int64, "Double": ua.VariantType.Double, "DateTime": ua.VariantType.DateTime}
EPOCH = datetime(1601, 1, 1, tzinfo=UTC)  # OPC UA's null DateTime: "no time"

VARS: tuple[Var, ...] = (
    Var("Ready", "Boolean", doc="the box takes triggers: running, trigger mode, camera healthy"),
    Var("Trigger", "Boolean", True, "PLC: set true (after TriggerPartId) to announce a part; reset once TriggerAck"),
    Var("TriggerPartId", "String", True, "PLC: the part's id, 1-128 printable characters, written before Trigger"),
    Var("TriggerAck", "Boolean", doc="box: the trigger was taken or refused (TriggerError); false after Trigger reset"),
    Var("TriggerAckPartId", "String", doc="box: the part id the last TriggerAck answered"),
    Var("TriggerError", "Int32", doc="box: 0 taken, else why refused (TRIGGER_ERRORS)"),
    Var("ResultReady", "Boolean", doc="box: Result.* holds a decision waiting for ResultAckSeq"),
    Var("ResultAckSeq", "Int64", True, "PLC: write Result.Seq here once the result is taken"),
    Var("Result.Seq", "Int64", doc="journal sequence number, the same as on MQTT; never reused"),
    Var("Result.PartId", "String"),
    Var("Result.Ok", "Boolean", doc="true only for accept: the one bit a gate may pass a part on"),
    Var("Result.Decision", "String", doc="accept | reject"),
    Var("Result.Reason", "String", doc="model | fault:<what>"),
    Var("Result.ErrorCode", "Int32", doc="0 model verdict, else the fault (RESULT_CODES)"),
    Var("Result.PDefect", "Double", doc="model probability of a defect; -1 when none (a fault)"),
    Var("Result.Threshold", "Double", doc="reject when PDefect >= Threshold; -1 when none"),
    Var("Result.ModelId", "String"),
    Var("Result.Recipe", "String", doc="the recipe the part was judged under; empty without recipes"),
    Var("Result.Ts", "DateTime", doc="when decided"),
    Var("Result.FrameTs", "DateTime", doc="capture time of the frame judged; 1601-01-01 when none"),
    Var("Result.Deadline", "DateTime", doc="after this the result is withdrawn (AcksMissed)"),
    Var("Result.LatencyMs", "Double", doc="frame capture to decision; -1 when none"),
    Var("RecipeRequest", "String", True, "PLC: the recipe to switch to, between two parts"),
    Var("RecipeActive", "String", doc="box: the recipe parts are judged under now"),
    Var("RecipeError", "Int32", doc="box: 0 or why the last RecipeRequest was refused"),
    Var("Status.State", "String", doc="inspecting | degraded | stopping"),
    Var("Status.ErrorCode", "Int32", doc="box: the last handshake or box error (BOX_ERRORS), 0 none"),
    Var("Status.ErrorText", "String"),
    Var("Status.Mode", "String", doc="trigger | continuous"),
    Var("Status.ModelId", "String"),
    Var("Status.CameraFault", "String", doc="empty, or the camera fault in force"),
    Var("Status.Parts", "Int64"),
    Var("Status.Accepted", "Int64"),
    Var("Status.Rejected", "Int64"),
    Var("Status.Faults", "Int64"),
    Var("Status.TriggersTaken", "Int64"),
    Var("Status.TriggersRefused", "Int64"),
    Var("Status.ResultsAcked", "Int64"),
    Var("Status.AcksMissed", "Int64", doc="results withdrawn at their deadline without ResultAckSeq"),
    Var("Status.ResultsExpired", "Int64", doc="results past their deadline before they could be presented"),
    Var("Status.AcksIgnored", "Int64", doc="ResultAckSeq writes that named no presented result"),
    Var("Status.UptimeS", "Double"),
)
BY_PATH = {v.path: v for v in VARS}

# TriggerError: why a trigger was not taken (the part then gets no result: the PLC rejects it on its timeout).
TRIGGER_OK, TRIGGER_BAD_PART_ID, TRIGGER_REPEATED, TRIGGER_NOT_TRIGGER_MODE, TRIGGER_STOPPING = 0, 1, 2, 3, 4
TRIGGER_ERRORS = {
    TRIGGER_OK: "taken: a result follows",
    TRIGGER_BAD_PART_ID: "TriggerPartId empty, longer than 128 characters or not printable",
    TRIGGER_REPEATED: "part id already triggered (over OPC UA or MQTT): answered once only",
    TRIGGER_NOT_TRIGGER_MODE: "the box runs in continuous mode (inspect.mode): triggers are not answered",
    TRIGGER_STOPPING: "the box is stopping",
}

# Result.ErrorCode: 0 a model verdict; each fail-safe reject has its own code (docs/mqtt.md's reasons).
RESULT_CODES = {
    "model": 0, "fault:no_part": 101, "fault:not_in_full_view": 102, "fault:stale_trigger": 103,
    "fault:frozen_frame": 104, "fault:stale_frame": 105, "fault:damaged_frames": 106,
    "fault:no_frame_after_trigger": 107, "fault:overloaded": 108, "fault:model_error": 109,
    "fault:occluded": 110, "fault:unfamiliar": 111, "fault:unknown_recipe": 112,
}
RESULT_OTHER_FAULT = 199  # a fault this table does not know yet: still a reject

# Status.ErrorCode: the box's own, latest first; cleared by nothing but the next error (counters say how many).
BOX_OK, ACK_MISSED, RESULT_EXPIRED, ACK_IGNORED, RECIPE_REFUSED = 0, 201, 202, 203, 204
BOX_ERRORS = {
    BOX_OK: "none",
    ACK_MISSED: "a result reached its deadline without ResultAckSeq: withdrawn (the PLC rejects that part)",
    RESULT_EXPIRED: "a result passed its deadline before it could be presented (previous one not acknowledged)",
    ACK_IGNORED: "ResultAckSeq named no presented result (late, or a wrong Seq)",
    RECIPE_REFUSED: "RecipeRequest refused (RecipeError says why)",
}


# RecipeError: the answer to the PLC's last RecipeRequest.
RECIPE_OK, RECIPE_UNKNOWN, RECIPE_NONE_CONFIGURED = 0, 1, 2
RECIPE_ERRORS = {
    RECIPE_OK: "taken: parts triggered from now on are judged under it; RecipeActive follows between two parts",
    RECIPE_UNKNOWN: "no such recipe in recipes.products (Status.ErrorText lists the configured ones)",
    RECIPE_NONE_CONFIGURED: "this box has no recipes configured",
}


def result_code(reason: str) -> int:
    return RESULT_CODES.get(reason, RESULT_OTHER_FAULT)


def variant(kind: str, value: Any) -> ua.Variant:
    return ua.Variant(value, _T[kind])


def initial(kind: str) -> Any:
    return {"Boolean": False, "String": "", "Int32": 0, "Int64": 0, "Double": 0.0, "DateTime": EPOCH}[kind]


def _time(value: Any) -> datetime:
    if value is None:
        return EPOCH
    return datetime.fromtimestamp(parse_ts(value), tz=UTC)


def _num(value: Any) -> float:
    return -1.0 if value is None or not math.isfinite(float(value)) else float(value)


def result_values(decision: dict[str, Any], seq: int) -> dict[str, Any]:
    """Result.* for a journaled decision: the very payload the MQTT gate gets, field for field."""
    reason = str(decision["reason"])
    return {
        "Result.Seq": seq, "Result.PartId": str(decision["part_id"]),
        "Result.Ok": decision["decision"] == "accept" and reason == "model",
        "Result.Decision": str(decision["decision"]), "Result.Reason": reason,
        "Result.ErrorCode": 0 if reason == "model" else result_code(reason),
        "Result.PDefect": _num(decision.get("p_defect")), "Result.Threshold": _num(decision.get("threshold")),
        "Result.ModelId": str(decision.get("model") or ""), "Result.Recipe": str(decision.get("recipe") or ""),
        "Result.Ts": _time(decision.get("ts")), "Result.FrameTs": _time(decision.get("frame_ts")),
        "Result.Deadline": _time(decision.get("deadline")), "Result.LatencyMs": _num(decision.get("latency_ms")),
    }
