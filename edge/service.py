"""Wire a Config into a running daemon: bundle, camera, broker, journal, publisher.

The adapters live here so `edge.daemon` stays testable without any of them.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Config
from edge.daemon import Daemon
from edge.delivery.contract import Topics, dumps
from edge.delivery.journal import Journal
from edge.delivery.mqtt import Publisher
from edge.delivery.mqtt_settings import MqttConfigError, MqttSettings, make_client
from edge.errors import StartError
from edge.inference import bundle as bundle_fmt
from edge.inference import override
from edge.inference.inspector import Inspector
from edge.inference.override import ThresholdRefused
from edge.inference.recipes import Recipe, RecipeBook, RecipeError
from edge.inference.shadow import Shadow
from edge.lifecycle import Lifecycle, load_recipes, reload_model
from edge.offline.dataset import (
    default_data_root,
    is_labelled,
    list_labelled,
    list_unlabelled,
    load_samples,
)
from edge.ops.audit import AuditSettings, AuditTrail
from edge.ops.drift import DriftSettings, DriftWatch
from edge.ops.telemetry import Telemetry
from edge.timestamps import iso
from edge.vision.camera import Camera
from edge.vision.simulate import SimulatedLine
from edge.vision.sources import IterSource, Source, SourceError, open_source

log = logging.getLogger(__name__)

MQTT_DEFAULT_PORT = 1883


class SettingError(StartError):
    """A setting the schema accepted that cannot be used on this box: a camera file that is not
    there, a folder that cannot be created, an unreadable password or TLS file.

    Retrying will not fix it, so the CLI exits 2 (bad config) with this one line, which names
    the key and the path. Faults that can pass (broker down, camera unplugged) are not this:
    the daemon starts degraded and reconnects.
    """


def sim_parts(cfg: Config) -> tuple[list[np.ndarray], list[str | None]]:
    """Part images for the simulated line: sim.images, else the dataset's test split, else drawn."""
    folder = cfg.sim.images
    if folder is None and (default_data_root() / "test").is_dir():
        folder = default_data_root() / "test"
    if folder is not None:
        samples = list_labelled(folder, require_both=False) if is_labelled(folder) else list_unlabelled(folder)
        rng = np.random.default_rng(cfg.sim.seed)
        picked = [samples[i] for i in rng.permutation(len(samples))[:200]]
        loaded = load_samples(picked)
        if len(loaded.paths):
            names = {0: "ok_front", 1: "def_front"}
            return list(loaded.images), [names.get(int(v)) for v in loaded.labels]
    from edge.vision.simulate import synthetic_part  # noqa: PLC0415

    return [synthetic_part(i, defect=i % 3 == 0) for i in range(12)], [
        "def_front" if i % 3 == 0 else "ok_front" for i in range(12)]


class SimPartSensor:
    """The simulated line's part sensor, for the trigger-mode demo (demo/trigger.yaml).

    A trigger-mode line announces each part when it reaches the camera (a photo-eye, the
    PLC); without one the simulated belt's parts and a gate's triggers never meet, and a
    trigger lands between two parts as often as not (fault:no_part). So, on its own demo
    broker only, the simulated line publishes {prefix}/trigger as each part's centre
    reaches the inspection line: the daemon answers it like any trigger, and
    `edge-gate --follow-triggers` expects the same part and actuates on its decision.
    Part ids are `<start time>-<n>`, unique across runs, so a decision journaled by an
    earlier run can never answer a part of this one.
    """

    def __init__(self) -> None:
        self._client: Any = None
        self._topic = ""
        self._run = time.strftime("%H%M%S")
        self._n = 0

    def start(self, settings: MqttSettings) -> None:
        self._topic = settings.topics.trigger
        self._client = make_client(settings, f"{settings.effective_client_id}-sim-sensor"[:256], "3.1.1",
                                   settings.read_password())
        self._client.connect_async(settings.host, settings.port, settings.keepalive)
        self._client.loop_start()
        log.info("simulated line announces its parts on the trigger topic (trigger-mode demo): follow them with "
                 "edge-gate --follow-triggers", extra={"topic": self._topic, "url": f"mqtt://{settings.host}:"
                                                        f"{settings.port}"})

    def announce(self) -> None:
        """A part reached the inspection line (called from the camera thread)."""
        client = self._client
        if client is None or not client.is_connected():
            return  # as a line's sensor with its broker down: the part is not announced
        self._n += 1
        part_id = f"{self._run}-{self._n}"
        client.publish(self._topic, dumps({"part_id": part_id, "ts": iso(time.time())}), qos=1)
        log.debug("simulated part announced", extra={"part_id": part_id})

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None


def _log_backlog(journal: Journal, cfg: Config, will_send: bool) -> None:
    """Say at start what the undelivered decisions of an earlier run are, once, before the
    publisher re-sends them: past their deadline they go to /decision/late one by one,
    each with its own warning, which otherwise reads as this run's decisions being late."""
    b = journal.backlog()
    if not b["pending"]:
        return
    late = Topics(cfg.mqtt.prefix).late
    ctx = {"oldest": iso(b["oldest_ts"]), "newest": iso(b["newest_ts"]), "journal": str(journal.path)}
    if b["expired"]:
        where = (f"sent now as late, on {late}, a record for monitoring" if will_send
                 else f"kept in the journal, to go to {late} once a broker is reachable")
        log.warning(f"{b['expired']} decisions from an earlier run (oldest {ctx['oldest']}) never reached the "
                    f"broker and are past their deadline: {where}; the gate must not act on them (a fail-safe "
                    "gate rejected those parts on timeout)", extra={"count": b["expired"], **ctx})
    if b["pending"] > b["expired"]:
        log.info(f"{b['pending'] - b['expired']} decisions from an earlier run are still within their deadline: "
                 f"sent to the gate on {cfg.mqtt.prefix}/decision", extra={"count": b["pending"] - b["expired"]})


def build_source(cfg: Config, on_part: Callable[[], None] | None = None) -> Source:
    """The camera source; for the simulated line, on_part is called as each part's centre
    reaches the inspection line, just before the frame that shows it there."""
    c = cfg.camera
    if c.source == "sim":
        images, labels = sim_parts(cfg)
        s = cfg.sim
        line_x = cfg.inspect.inspection_line * s.width

        def frames() -> Iterator[np.ndarray]:
            line = SimulatedLine(images, labels, width=s.width, height=s.height, speed_px=s.speed_px,
                                 spacing_px=s.spacing_px, diameter_px=s.part_diameter_px,
                                 belt_level=s.belt_level, context=s.context, seed=s.seed)
            for frame, truth in line:
                if on_part is not None:
                    for _ in range(sum(p.cx - s.speed_px < line_x <= p.cx for p in truth.parts)):
                        on_part()
                yield frame

        return IterSource("sim", frames, fps=s.fps)
    return open_source(c.source, loop=c.loop, fps=c.fps, open_timeout_s=c.open_timeout_s,
                       read_timeout_s=c.read_timeout_s, width=c.width, height=c.height)


def mqtt_settings(cfg: Config, host: str, port: int) -> MqttSettings:
    m = cfg.mqtt
    tls = m.tls
    return MqttSettings(
        host=host, port=port, prefix=m.prefix, client_id=m.client_id, protocol=m.protocol,
        keepalive=m.keepalive_s, username=m.username,
        password_file=str(m.password_file) if m.password_file else None, password_env=m.password_env,
        tls_ca=str(tls.ca_file) if tls and tls.ca_file else None,
        tls_cert=str(tls.cert_file) if tls and tls.cert_file else None,
        tls_key=str(tls.key_file) if tls and tls.key_file else None,
        tls_insecure=bool(tls and tls.insecure), tls=tls is not None,
        decision_deadline_s=m.decision_deadline_s,
        online_expiry_s=3 * m.status_interval_s,  # refreshed every status_interval_s while connected
    )


def run(cfg: Config, duration_s: float | None = None,
        on_decision: Callable[[dict[str, Any]], None] | None = None,
        ready: Callable[[Daemon], None] | None = None, config_path: Path | None = None,
        lifecycle: Lifecycle | None = None) -> Daemon:
    """Run until SIGTERM/SIGINT (or duration_s); returns the stopped daemon for its counters.

    SIGHUP reloads the model from `config_path` (when given) without stopping the line.
    """
    life = lifecycle or Lifecycle()
    with ExitStack() as stack:
        try:
            book = load_recipes(cfg)  # every recipe's bundle loaded and self-checked, or none configured
        except RecipeError as exc:
            raise SettingError(str(exc)) from None
        if book is None:
            b = bundle_fmt.load(cfg.model.bundle)
            try:
                inspector = Inspector.load(b, cfg.model.threshold, cfg.model.threads,
                                           cfg.model.accept_validation_escapes)
            except ThresholdRefused as exc:
                raise SettingError(str(exc)) from None
            if inspector.threshold_check is not None:
                override.announce(inspector.threshold_check, inspector.model_id)
            inspector.self_check()  # as on reload; also warms the interpreter before the first part
        else:
            inspector = next(iter(book)).inspector
        host, port = cfg.mqtt.host, cfg.mqtt.port
        if host is None:
            host, port = _local_broker(stack, cfg.mqtt.port)
        # The simulated line in trigger mode on the demo's own broker plays the line's part sensor.
        sensor = SimPartSensor() if (cfg.camera.source == "sim" and cfg.inspect.mode == "trigger"
                                     and cfg.mqtt.host is None and host is not None) else None
        try:
            Path(cfg.journal.path).parent.mkdir(parents=True, exist_ok=True)
            journal = Journal(cfg.journal.path, retention_days=cfg.journal.retention_days,
                              max_rows=cfg.journal.max_rows)
        except OSError as exc:
            raise SettingError(f"journal.path {cfg.journal.path}: cannot create it: {_why(exc)}") from exc
        stack.callback(journal.close)
        _log_backlog(journal, cfg, will_send=host is not None)
        start_recipe = _start_recipe(cfg, book, journal)
        try:
            source = build_source(cfg, on_part=sensor.announce if sensor is not None else None)
        except SourceError as exc:
            raise SettingError(f"camera.source: {exc}") from exc
        camera = Camera(source, stale_after_s=cfg.camera.stale_after_s,
                        frozen_after=cfg.camera.frozen_after, reconnect_min_s=cfg.camera.reconnect_min_s,
                        reconnect_max_s=cfg.camera.reconnect_max_s, rotate=cfg.camera.rotate)
        daemon_ref: list[Daemon] = []
        try:
            settings = mqtt_settings(cfg, host or "127.0.0.1", port)
        except MqttConfigError as exc:  # the schema checks the same rules; kept as a backstop
            raise SettingError(f"mqtt: {exc}") from exc
        publisher = Publisher(settings, journal, status_fn=lambda: daemon_ref[0].status() if daemon_ref else {})
        audit = None
        if cfg.audit.dir is not None:
            try:
                audit = AuditTrail(AuditSettings(Path(cfg.audit.dir), cfg.audit.sample_accepted,
                                                 int(cfg.audit.max_mb * 2**20)))
            except OSError as exc:
                raise SettingError(f"audit.dir {cfg.audit.dir}: cannot create it: {_why(exc)}") from exc
            stack.callback(audit.close)
        collect = None
        if cfg.collect.dir is not None:
            c = cfg.collect
            try:
                collect = AuditTrail(AuditSettings(Path(c.dir), sample_accepted=c.sample, max_bytes=int(c.max_mb * 2**20),
                                                   sample_rejected=c.sample, crops_only=True, name="collect"))
            except OSError as exc:
                raise SettingError(f"collect.dir {c.dir}: cannot create it: {_why(exc)}") from exc
            stack.callback(collect.close)
        station = None
        if cfg.opcua.enabled:  # the PLC's handshake beside MQTT: the same journal rows (docs/plc.md)
            try:
                from edge.delivery.opcua import OpcuaError, OpcuaStation, WithOpcua
            except ImportError as exc:
                raise SettingError(f"opcua.enabled: needs the opcua extra (pip install 'edge-inspect[opcua]'): "
                                   f"{exc}") from None
            station = OpcuaStation(cfg.opcua, journal, cfg.inspect.mode, lambda p, t: daemon_ref[0].trigger(p, t),
                                   lambda: daemon_ref[0].status() if daemon_ref else {},
                                   select_recipe=(lambda name: daemon_ref[0].select_recipe(name, "opcua"))
                                   if book is not None else None)
        sink = WithOpcua(publisher, station) if station is not None else publisher
        daemon = Daemon(cfg, camera, sink, inspector, on_decision=on_decision, audit=audit, collect=collect,
                        recipes=book, recipe=start_recipe)
        daemon_ref.append(daemon)
        if book is not None:
            _wire_recipes(daemon, journal, publisher, station, start_recipe)
        if station is not None:
            try:
                station.start()
            except OpcuaError as exc:
                raise SettingError(str(exc)) from exc
            stack.callback(station.stop)
            daemon.camera_watch.on_change = station.refresh
        if cfg.model.shadow is not None:
            daemon.shadow = _shadow(cfg, publisher)
            stack.callback(daemon.shadow.close)
        if cfg.drift.enabled:
            d = cfg.drift
            daemon.drift = DriftWatch(DriftSettings(d.window, d.baseline_parts, d.k, d.reject_z),
                                      daemon.inspector.bundle.meta.get("image_stats"))
        # In continuous mode too, so that a trigger sent there is said to be ignored (Daemon.trigger).
        publisher.on_trigger(lambda t: daemon.trigger(t.part_id, t.received_mono, t.ts, t.recipe))
        if host is not None:
            try:
                publisher.start()  # reads the password and TLS files; connects in the background
            except MqttConfigError as exc:
                raise SettingError(f"{_mqtt_key(str(exc))}: {exc}") from exc
            stack.callback(publisher.stop)
            # a camera fault is on the status at once
            daemon.camera_watch.on_change = _both(publisher.publish_status, daemon.camera_watch.on_change)
            if sensor is not None:
                sensor.start(settings)
                stack.callback(sensor.stop)
        camera.start()
        stack.callback(camera.stop)
        _install_signals(daemon)
        if cfg.service.metrics_listen:
            m_host, _, m_port = cfg.service.metrics_listen.rpartition(":")
            telemetry = Telemetry(lambda: _state(daemon, publisher, journal))
            try:
                telemetry.serve(m_host.strip("[]"), int(m_port))
            except OSError as exc:
                raise StartError(f"service.metrics_listen {cfg.service.metrics_listen}: {exc}") from exc
            stack.callback(telemetry.close)
            daemon.telemetry = telemetry
        daemon.on_tick = lambda: life.tick(daemon)
        if config_path is not None:
            state = {"cfg": cfg}

            def reload() -> None:
                state["cfg"] = reload_model(daemon, config_path, state["cfg"], life.notifier)

            daemon.reloader = reload
        life.ready(_startup(cfg, publisher, camera, daemon))
        stack.callback(life.stopping)
        threading.Thread(target=_status_loop, args=(publisher, daemon.stop_event, cfg.mqtt.status_interval_s),
                         name="status", daemon=True).start()
        stack.callback(daemon.stop_event.set)  # ends the status loop however the run ends
        if ready:
            ready(daemon)
        daemon.run(duration_s)
        log.info("stopping", extra={"parts": daemon.counters.parts})
    return daemon


def _start_recipe(cfg: Config, book: RecipeBook | None, journal: Journal) -> str | None:
    """The recipe a start resumes: the journal's last switch when still configured, else recipes.start
    (or the first listed). A restart must not quietly change the product a line is set up for."""
    if book is None:
        return None
    switches = journal.recipe_switches(limit=1)
    last = switches[-1].recipe if switches else None
    if last is not None and last in book:
        log.info("recipe resumed from the journal", extra={"recipe": last, "since": iso(switches[-1].ts)})
        return last
    first = cfg.recipes.first
    if last is not None:
        log.warning(f"the journal's last recipe {last!r} is no longer configured: starting with {first!r}",
                    extra={"recipe": first, "journaled": last})
    return first


def _wire_recipes(daemon: Daemon, journal: Journal, publisher: Publisher, station: Any,
                  start: str | None) -> None:
    """Switches journaled first, then announced: retained {prefix}/recipe, the status, OPC UA's RecipeActive."""
    topic = publisher.topics.recipe

    def state(recipe: Recipe, event: dict[str, Any]) -> dict[str, Any]:
        return {"recipe": recipe.name, "model": recipe.model_id, "threshold": recipe.inspector.threshold,
                "recipes": daemon.recipes.names, "ts": iso(event.get("ts") or time.time()),
                **{k: event.get(k) for k in ("switch", "previous", "source", "request_id", "after_seq")}}

    def announce(recipe: Recipe, event: dict[str, Any]) -> None:
        publisher.set_retained(topic, state(recipe, event))
        publisher.publish_status()
        if station is not None:
            station.refresh()

    def record(name: str, previous: str | None, source: str, model: str, request_id: str | None) -> dict[str, Any]:
        return journal.record_recipe(name, previous, source, model, request_id).to_dict()

    daemon.record_switch = record
    daemon.on_recipe = announce
    last = journal.recipe_switches(limit=1)
    if not last or last[-1].recipe != start:  # the journal says what the first part is judged under
        event = record(str(start), last[-1].recipe if last else None, "start", daemon.recipe.model_id, None)
    else:
        event = last[-1].to_dict()
    publisher.set_retained(topic, state(daemon.recipe, event))
    publisher.on_recipe(lambda req: daemon.select_recipe(req.recipe, "mqtt", req.id))


def _shadow(cfg: Config, publisher: Publisher) -> Shadow:
    """The candidate of model.shadow, loaded and self-checked as a live bundle is; refused at start, by key."""
    path = cfg.model.shadow
    try:
        candidate = Inspector.load(bundle_fmt.load(path), threads=cfg.model.threads)
        candidate.self_check()
    except (bundle_fmt.BundleError, ThresholdRefused, OSError) as exc:
        raise SettingError(f"model.shadow {path}: {exc}") from exc
    topic = publisher.topics.shadow
    try:
        shadow = Shadow(candidate, Path(cfg.model.shadow_record), lambda row: publisher.publish_event(topic, row))
    except OSError as exc:
        raise SettingError(f"model.shadow_record {cfg.model.shadow_record}: cannot write it: {_why(exc)}") from exc
    log.info("shadow candidate judging every part beside the live bundle", extra={
        "shadow": candidate.model_id, "record": str(cfg.model.shadow_record), "topic": topic})
    return shadow


def _both(first: Callable[[], Any], second: Callable[[], Any] | None) -> Callable[[], None]:
    def call() -> None:
        first()
        if second is not None:
            second()
    return call


def _why(exc: OSError) -> str:
    """An OSError's reason and the path it hit, which may be a parent of the configured one."""
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return f"part of the path is a file, not a folder ({exc.filename})"
    return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc.strerror or exc)


def _mqtt_key(message: str) -> str:
    """The mqtt key a publisher start error is about, so the operator knows which line to fix."""
    for key in ("password_file", "password_env"):
        if key in message:
            return f"mqtt.{key}"
    return "mqtt.tls" if "TLS" in message else "mqtt"


def _status_loop(publisher: Publisher, stop: threading.Event, interval_s: float) -> None:
    """Counters on the retained status topic for dashboards; `online` itself is sent on connect.

    It also refreshes the retained `online` before its MQTT 5 expiry, so nothing may end it:
    a dead loop would let a healthy daemon's `online` expire and every gate reconnecting then
    would reject every part.
    """
    while not stop.wait(interval_s):
        try:
            publisher.publish_status()
        except Exception:  # noqa: BLE001 - logged; the next pass tries again
            log.exception("status publish failed; retrying at the next interval")


def _local_broker(stack: ExitStack, port: int = MQTT_DEFAULT_PORT) -> tuple[str | None, int]:
    """The demo's broker: a local mosquitto, or none at all where it is not installed
    (decisions are then journaled and printed, so the demo still runs on a bare machine).

    It listens on loopback, on a free port when mqtt.port is the default 1883 (a broker
    already on the box keeps it) and on mqtt.port otherwise, so that a demo config can
    name the port a gate is started against (demo/trigger.yaml).
    """
    from edge.delivery.broker import LocalBroker, mosquitto_path  # noqa: PLC0415

    if mosquitto_path() is None:
        log.warning("no broker configured (mqtt.host) and mosquitto is not installed: decisions are journaled "
                    "but not published (apt-get install mosquitto, or set mqtt.host)")
        return None, MQTT_DEFAULT_PORT  # unused: the publisher is never started
    broker = LocalBroker()
    if port != MQTT_DEFAULT_PORT:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise StartError(f"mqtt.port {port}: cannot listen on 127.0.0.1:{port} for the local broker "
                                 f"({exc.strerror or exc}): is another demo running? Stop it or choose another "
                                 "port") from None
        broker.port = port
    broker.start()
    stack.callback(broker.stop)
    log.info("no broker configured: started a local mosquitto",
             extra={"url": f"mqtt://127.0.0.1:{broker.port}", "port": broker.port})
    return "127.0.0.1", broker.port


def _state(daemon: Daemon, publisher: Publisher, journal: Journal) -> dict[str, Any]:
    """What a metrics scrape reports besides the decision counters."""
    s = daemon.status()
    s.update(broker_connected=publisher.connected, journal_pending=journal.counts()["pending"],
             model_sha=daemon.inspector.bundle.sha256, mqtt=publisher.stats())
    return s


def _startup(cfg: Config, publisher: Publisher, camera: Camera, daemon: Daemon) -> str:
    """Wait (up to service.ready_timeout_s) for the broker and a first frame.

    Either may be missing at boot; the daemon then runs degraded rather than not at all:
    without a broker it journals every decision for later delivery, without a camera
    it answers triggers with fail-safe rejects. The status line says which.
    """
    deadline = time.monotonic() + cfg.service.ready_timeout_s
    broker_ok = publisher.started and publisher.wait_ready(cfg.service.ready_timeout_s)
    frame = camera.next_frame(0, max(0.0, deadline - time.monotonic()))
    missing = [what for what, ok in (("broker", broker_ok), ("camera", frame is not None)) if not ok]
    status = f"inspecting ({cfg.inspect.mode}), model {daemon.inspector.model_id}"
    if daemon.recipe.name is not None:
        status += f", recipe {daemon.recipe.name}"
    checked = daemon.inspector.threshold_check
    if checked is not None and checked.overridden:
        status += f"; {checked.describe()}"
    if missing:
        status = f"degraded: no {' and no '.join(missing)} yet; {status}"
        log.warning("starting degraded", extra={"missing": missing})
    return status


def _install_signals(daemon: Daemon) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    stop = daemon.stop_event

    def handler(signum: int, _frame: object) -> None:
        log.info("signal received: stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    def hup(_signum: int, _frame: object) -> None:
        log.info("SIGHUP: reload requested")
        daemon.reload_requested.set()

    signal.signal(signal.SIGHUP, hup)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
