"""Prometheus metrics for the line's monitoring.

Event metrics (decisions, p_defect, latencies) are observed as decisions are made;
state (camera, broker, journal, model) is read from the running daemon at scrape time,
so a scrape always shows the present and never a stale copy. Own registry: nothing
from other libraries leaks in, and tests can run several daemons in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
P_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class _State(Collector):
    def __init__(self, state_fn: Callable[[], dict[str, Any]]) -> None:
        self.state_fn = state_fn

    def collect(self) -> Iterator[Any]:
        s = self.state_fn()
        cam = s.get("camera", {})
        yield CounterMetricFamily("edge_frames_captured", "Frames read from the camera", value=cam.get("frames", 0))
        yield CounterMetricFamily("edge_frames_dropped", "Frames never inspected (the loop takes the newest)",
                                  value=cam.get("dropped", 0))
        yield CounterMetricFamily("edge_camera_reconnects", "Camera re-opens", value=cam.get("reconnects", 0))
        yield CounterMetricFamily("edge_camera_bad_frames", "Frames skipped because they cannot be made 8-bit gray",
                                  value=cam.get("bad_frames", 0))
        yield CounterMetricFamily("edge_tracking_overruns", "Inspected frames after a gap in which a part moved "
                                  "more than its diameter (parts may be missed or confused)",
                                  value=s.get("tracking_overruns", 0))
        audit = s.get("audit", {})
        yield CounterMetricFamily("edge_audit_errors", "Audit writes that failed (disk full, folder gone)",
                                  value=audit.get("errors", 0))
        yield CounterMetricFamily("edge_audit_dropped", "Audited decisions not saved: the disk did not keep up",
                                  value=audit.get("dropped", 0))
        yield CounterMetricFamily("edge_audit_evicted", "Audited decisions deleted, oldest first, to stay within "
                                  "audit.max_mb", value=audit.get("evicted", 0))
        shadow = s.get("shadow", {})
        yield CounterMetricFamily("edge_shadow_judged", "Parts the shadow candidate judged (model.shadow)",
                                  value=shadow.get("judged", 0))
        disagree = CounterMetricFamily("edge_shadow_disagreements", "Parts the shadow candidate decided otherwise "
                                       "than the live bundle, by live and candidate decision", labels=["live", "shadow"])
        for live, cand in (("accept", "reject"), ("reject", "accept")):
            disagree.add_metric([live, cand], shadow.get(f"live_{live}_shadow_{cand}", 0))
        yield disagree
        yield CounterMetricFamily("edge_shadow_dropped", "Parts the shadow did not judge: it did not keep up",
                                  value=shadow.get("dropped", 0))
        collect = s.get("collect", {})
        yield CounterMetricFamily("edge_collect_saved", "Crops saved for labelling (collect.dir)",
                                  value=collect.get("saved", 0))
        yield CounterMetricFamily("edge_collect_dropped", "Crops for labelling not saved: the disk did not keep up",
                                  value=collect.get("dropped", 0))
        yield CounterMetricFamily("edge_collect_errors", "Writes to collect.dir that failed",
                                  value=collect.get("errors", 0))
        yield GaugeMetricFamily("edge_camera_fps", "Frames per second over the last 2 s", value=cam.get("fps", 0.0))
        yield GaugeMetricFamily("edge_camera_connected", "1 while the camera delivers",
                                value=1.0 if cam.get("connected") else 0.0)
        fault = GaugeMetricFamily("edge_camera_fault", "1 for the camera's current fault", labels=["fault"])
        if cam.get("fault"):
            fault.add_metric([str(cam["fault"])], 1.0)
        yield fault
        # Episodes, not the gauge, show a fault that began and cleared between two scrapes.
        episodes = CounterMetricFamily("edge_camera_fault_episodes", "Camera faults begun (FaultWatch: one per "
                                       "episode, however many frames it lasts), by fault", labels=["fault"])
        for name, n in (cam.get("fault_episodes") or {}).items():
            episodes.add_metric([str(name)], n)
        yield episodes
        yield CounterMetricFamily("edge_camera_damaged_frames", "Video-file frames that could not be decoded "
                                  "and were skipped", value=cam.get("damaged_frames", 0))
        yield CounterMetricFamily("edge_parts_inspected", "Parts decided (model or fault)", value=s.get("parts", 0))
        yield GaugeMetricFamily("edge_broker_connected", "1 while connected to the MQTT broker",
                                value=1.0 if s.get("broker_connected") else 0.0)
        yield GaugeMetricFamily("edge_journal_backlog", "Decisions journaled but not yet acknowledged by the broker",
                                value=s.get("journal_pending", 0))
        # Publisher.stats() under "mqtt", as in the retained status: a takeover takes the line down.
        yield CounterMetricFamily("edge_mqtt_session_taken_over", "Broker connections lost because another client "
                                  "connected with the daemon's client id (said by the broker, or suspected: "
                                  "dropped within a keepalive of connecting); should stay 0",
                                  value=(s.get("mqtt") or {}).get("session_taken_over", 0))
        delivery = GaugeMetricFamily("edge_delivery_fault", "1 for each delivery fault in force (journal cannot "
                                     "record deliveries, MQTT network thread died)", labels=["fault"])
        for name in s.get("delivery_faults") or []:
            delivery.add_metric([str(name)], 1.0)
        yield delivery
        drift = GaugeMetricFamily("edge_drift", "1 while a monitored statistic is off its baseline", labels=["signal"])
        for name, on in (s.get("drift") or {}).items():
            drift.add_metric([name], 1.0 if on else 0.0)
        yield drift
        info = InfoMetricFamily("edge_model", "The model in use")
        th = s.get("threshold") or {}
        info.add_metric([], {"sha": str(s.get("model_sha", "")), "id": str(s.get("model", "")),
                             "threshold": str(th.get("value", ""))})
        yield info
        if s.get("recipe") is not None:
            recipe = InfoMetricFamily("edge_recipe", "The recipe parts are judged under now")
            recipe.add_metric([], {"name": str(s["recipe"])})
            yield recipe
            yield CounterMetricFamily("edge_recipe_switches", "Recipe switches since start (journaled)",
                                      value=s.get("recipe_switches", 0))
        yield GaugeMetricFamily("edge_threshold", "Operating threshold in force (reject when p_defect >= it)",
                                value=float(th.get("value") or 0.0))
        yield GaugeMetricFamily("edge_threshold_override", "1 while the config overrides the bundle's threshold",
                                value=1.0 if th.get("override") else 0.0)
        val = th.get("validation") or {}
        escapes = GaugeMetricFamily("edge_threshold_validation_escapes", "Bundle validation defects the threshold "
                                    "in force would accept (the bundle's own threshold: label bundle)",
                                    labels=["threshold"])
        if val:
            escapes.add_metric(["in_force"], float(val["escapes"]))
            escapes.add_metric(["bundle"], float(val["escapes_at_bundle"]))
        yield escapes


class Telemetry:
    def __init__(self, state_fn: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter("edge_decisions", "Decisions by outcome and reason", ["decision", "reason"],
                                 registry=r)
        self.p_defect = Histogram("edge_p_defect", "Model output per inspected part", buckets=P_BUCKETS, registry=r)
        self.inference = Histogram("edge_inference_seconds", "Model invoke time", buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("edge_decision_latency_seconds", "Frame capture to decision published",
                                 buckets=LATENCY_BUCKETS, registry=r)
        r.register(_State(state_fn))
        self._server: Any = None

    def observe(self, decision: dict[str, Any], inference_s: float | None) -> None:
        self.decisions.labels(decision["decision"], decision["reason"]).inc()
        if decision.get("p_defect") is not None:
            self.p_defect.observe(decision["p_defect"])
        if inference_s is not None:
            self.inference.observe(inference_s)
        if decision.get("latency_ms") is not None:
            self.latency.observe(decision["latency_ms"] / 1000)

    def serve(self, host: str, port: int) -> None:
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics endpoint up", extra={"url": f"http://{host}:{port}/metrics"})

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
