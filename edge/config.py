"""The daemon's configuration: one typed schema, YAML in, line-precise errors out.

Unknown keys are errors (a typo must not silently fall back to a default on a line
that ships parts). Relative paths are resolved against the config file's folder.

Whatever the file holds, reading it ends in a Config or a ConfigError within bounded
time and memory: only a regular file of at most MAX_BYTES is read, YAML nesting and alias
expansion are capped while composing (an alias bomb is refused before it is expanded),
timestamps stay strings, and a number Python cannot convert is a problem with its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge.config_file import ConfigError, Strict, key_text, one_line, read_bytes, read_yaml, short
from edge.delivery.contract import check_prefix
from edge.delivery.opcua_settings import OpcuaSection
from edge.inference.bundle import DEFAULT_BUNDLE
from edge.inference.recipe_settings import RecipesSection, cross_checks
from edge.vision.locate import LocateConfig
from edge.vision.simulate import DATASET_BACKDROP_LEVEL, DEMO_CONTEXT
from edge.vision.sources import is_path_source

MQTT_STRING_MAX = 65535  # bytes of UTF-8: an MQTT string's 2-byte length prefix
# Longer than any naming scheme needs (hostname-based ids are <= 77 bytes) and far below
# the 65535 where paho's thread dies with struct.error. MQTT 3.1.1 only obliges a broker to
# take 23 characters [0-9a-zA-Z]; Mosquitto and most others take this much.
CLIENT_ID_MAX = 256
HOST_MAX = 253  # a DNS name's limit


def _mqtt_string(v: str, limit: int) -> str:
    """MQTT's rules for a UTF-8 string (spec 1.5.3), so the broker or paho never refuses it
    at run time: no control characters (C0, DEL, C1), no surrogates or non-characters, and
    at most `limit` bytes."""
    for i, c in enumerate(v):
        o = ord(c)
        if o < 0x20 or 0x7F <= o <= 0x9F:
            raise ValueError(f"must not contain control character U+{o:04X} (at character {i + 1})")
        if 0xD800 <= o <= 0xDFFF or 0xFDD0 <= o <= 0xFDEF or (o & 0xFFFE) == 0xFFFE:
            raise ValueError(f"must not contain U+{o:04X}: MQTT forbids surrogates and non-characters")
    size = len(v.encode("utf-8"))
    if size > limit:
        raise ValueError(f"is {size} bytes of UTF-8; at most {limit}")
    return v


class ModelSection(Strict):
    bundle: Path = Field(DEFAULT_BUNDLE, description="bundle folder (model.tflite + model.json)")
    threshold: float | None = Field(None, gt=0, le=1, description="override the bundle's threshold "
                                    "(checked against the bundle's validation scores: edge.inference.override)")
    accept_validation_escapes: int | None = Field(
        None, ge=0, description="acknowledge an override that accepts this many of the bundle's validation defects")
    threads: int = Field(1, ge=1, le=16, description="interpreter threads")
    shadow: Path | None = Field(None, description="candidate bundle judging every part beside the live one, "
                                "never actuating (docs/commissioning.md); null = off")
    shadow_record: Path = Field(Path("state/shadow.jsonl"), description="the shadow's verdicts beside the live "
                                "ones, one JSON line per part")
    shadow_recipe: str | None = Field(None, description="with recipes: the recipe whose parts the shadow judges "
                                      "(a candidate is trained for one product)")


class CameraSection(Strict):
    source: str | int = Field(
        "sim",
        description="sim | V4L2 index or /dev/videoN | video file | image folder | rtsp:// or http(s):// URL | "
        "GStreamer pipeline ending in appsink; a relative file or folder is taken from the config file's folder",
    )
    loop: bool = Field(True, description="restart a video file or folder at its end")
    fps: float | None = Field(None, gt=0, le=1000, description="pace a video file or image folder at this rate; "
                              "null = the file's own rate, 5 fps for a folder (the simulated line uses sim.fps)")
    width: int | None = Field(None, gt=0, le=16384, description="request this frame width from a device")
    height: int | None = Field(None, gt=0, le=16384)
    rotate: Literal[0, 90, 180, 270] = Field(
        0, description="turn every frame clockwise by this many degrees, so that parts cross the image from side "
        "to side (continuous mode follows them along the image's width); 0 = as the camera delivers")
    open_timeout_s: float = Field(5.0, gt=0, le=120)
    read_timeout_s: float = Field(2.0, gt=0, le=120)
    stale_after_s: float = Field(0.5, gt=0, le=60, description="no new frame for this long is a camera fault")
    frozen_after: int = Field(30, ge=2, le=1_000_000, description="this many identical frames in a row is a camera fault")
    # Bounded: Event.wait() raises OverflowError for a huge timeout, which would end reconnecting.
    reconnect_min_s: float = Field(0.5, gt=0, le=3600)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, v: str | int) -> str | int:
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty")
        if isinstance(v, int) and not 0 <= v < 2**31:  # OpenCV takes a C int, then fails on every reconnect
            raise ValueError("a device index must be 0 .. 2147483647")
        return v

    @model_validator(mode="after")
    def _backoff_order(self) -> CameraSection:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


class SimSection(Strict):
    images: Path | None = Field(None, description="folder of part images (default: dataset test split or drawn parts)")
    width: int = Field(1280, ge=320, le=4096)
    height: int = Field(720, ge=240, le=4096)
    fps: float = Field(30.0, gt=0, le=240)
    speed_px: float = Field(16.0, gt=0, description="belt speed in pixels per frame")
    spacing_px: int = Field(520, gt=0, le=100_000, description="distance between part centres")
    part_diameter_px: int = Field(300, ge=60, le=4096)
    belt_level: float = Field(DATASET_BACKDROP_LEVEL, ge=0, le=255,
                              description="belt grey level; 162 matches the dataset backdrop")
    context: float = Field(DEMO_CONTEXT, ge=1.0, le=1.23, description="pasted radius around each part, in rim radii")
    seed: int = Field(0, ge=0, le=2**63 - 1)  # numpy refuses a negative seed at start


class InspectSection(Strict):
    mode: Literal["continuous", "trigger"] = "continuous"
    locate: Literal["auto", "roi"] = "auto"
    roi: tuple[int, int, int, int] | None = Field(None, description="x, y, width, height in frame pixels")
    inspection_line: float = Field(0.5, ge=0, le=1, description="fraction of frame width where parts are inspected; "
                                   "trigger mode judges only a whole part this line crosses")
    predictive_crop: bool = Field(True, description="continuous mode: judge a part at its predicted position in the "
                                  "frame where it is nearest the line, before searching that frame (lower latency)")
    belt_direction: Literal["left_to_right", "right_to_left"] = Field(
        "left_to_right", description="continuous mode: which way parts cross the camera image")
    belt_speed_px_per_frame: float = Field(
        0.0, ge=0, description="continuous mode: how far a part moves between two camera frames, in frame pixels; "
        "0 = learn it from the parts. Set it where the box may inspect fewer frames than the belt needs: without "
        "it, a loop that never sees a part twice within a rim radius of travel follows no part")
    # A frame dimension at most: OpenCV's HoughCircles takes a C long and fails on every frame.
    min_diameter_px: int = Field(120, gt=0, le=16384)
    max_diameter_px: int = Field(700, gt=0, le=16384)
    rim_edge: Literal["darker_outside", "either"] = Field(
        "darker_outside", description="the edge that marks a part's rim in the frame: darker_outside (a dark outline, "
        "shadow or belt around a bright part) or either (also a belt lighter than the part, where darker_outside finds "
        "the dark vane ring inside the rim)")
    trigger_wait_s: float = Field(0.5, gt=0, le=10, description="wait this long for a fresh frame after a trigger")
    max_trigger_age_s: float = Field(2.0, gt=0, description="a trigger whose ts is older than this on arrival is "
                                     "answered with reject (fault:stale_trigger)")

    def locate_config(self, lo: int | None = None, hi: int | None = None) -> LocateConfig:
        """The locator's rim range in frame pixels: this section's, or a recipe's where it sets one."""
        return LocateConfig(min_diameter=lo or self.min_diameter_px, max_diameter=hi or self.max_diameter_px,
                            rim_polarity=-1 if self.rim_edge == "darker_outside" else 0)

    @model_validator(mode="after")
    def _roi_when_needed(self) -> InspectSection:
        if self.locate == "roi" and self.roi is None:
            raise ValueError("locate: roi needs roi: [x, y, width, height]")
        if self.locate == "roi" and self.mode == "continuous":
            # Continuous mode follows parts across the whole frame; a fixed ROI would be ignored.
            raise ValueError("locate: roi is for trigger mode (a fixture that holds each part in one place); "
                             "continuous mode finds and follows parts anywhere in the frame: use locate: auto")
        if self.roi is not None and (self.roi[2] <= 0 or self.roi[3] <= 0 or min(self.roi[:2]) < 0
                                     or max(self.roi) > 65535):
            raise ValueError(f"roi {short(list(self.roi))}: x, y must be >= 0 and width, height > 0 "
                             "(frame pixels, at most 65535)")
        if self.max_diameter_px < self.min_diameter_px:
            raise ValueError("max_diameter_px must be >= min_diameter_px")
        return self


class TlsSection(Strict):
    ca_file: Path | None = Field(None, description="CA bundle; the system store when empty")
    cert_file: Path | None = Field(None, description="client certificate (with key_file)")
    key_file: Path | None = Field(None, validate_default=True, description="the client certificate's key")
    insecure: bool = Field(False, description="skip certificate verification (never on a real line)")

    @field_validator("key_file")
    @classmethod
    def _key_with_cert(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        # The publisher refuses this too, but only at start: say it here, at key_file's line.
        if "cert_file" in info.data and (info.data["cert_file"] is None) != (v is None):
            given, missing = ("key_file", "cert_file") if v is not None else ("cert_file", "key_file")
            raise ValueError(f"{given} without {missing}: the client certificate and its key go together")
        return v


class MqttSection(Strict):
    host: str | None = Field(None, description="broker host; null = start a local mosquitto on a free loopback "
                             "port, or on mqtt.port when it is not 1883 (demo; decisions only journaled where "
                             "mosquitto is not installed)")
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = "casting/line1/cam1"
    client_id: str = ""
    protocol: Literal["5", "3.1.1", "auto"] = "auto"
    keepalive_s: int = Field(15, ge=2, le=3600)
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    tls: TlsSection | None = None
    decision_deadline_s: float = Field(2.0, gt=0, le=3600)
    status_interval_s: float = Field(10.0, ge=0.5, le=3600, description="re-publish the retained online status")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        check_prefix(v)  # the MQTT contract's own rule; its ContractError is a ValueError
        if v.startswith("$"):
            raise ValueError("must not start with '$': brokers reserve those topics ($SYS) and refuse publishes")
        # The longest topic built on it, {prefix}/decision/late, must fit an MQTT string.
        return _mqtt_string(v, MQTT_STRING_MAX - len("/decision/late"))

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        return _mqtt_string(v, CLIENT_ID_MAX)

    @field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        return v if v is None else _mqtt_string(v, MQTT_STRING_MAX)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        # An empty host (an unset template variable) must not quietly mean localhost:1883.
        if v is not None and not v.strip():
            raise ValueError("must not be empty: the broker's host name, or null to start a local "
                             "mosquitto (demo)")
        if v is not None and (len(v.encode("utf-8", "replace")) > HOST_MAX or not v.isprintable() or " " in v):
            raise ValueError(f"not a host name or address (at most {HOST_MAX} bytes, no spaces or control characters)")
        return v

    @field_validator("password_file", "password_env")
    @classmethod
    def _password_pairing(cls, v: Any, info: ValidationInfo) -> Any:
        # Same rules as MqttSettings, checked here so --check-config reports them with a line.
        if v is None:
            return v
        if info.field_name == "password_env" and info.data.get("password_file") is not None:
            raise ValueError("give password_file or password_env, not both")
        if "username" in info.data and not info.data["username"]:
            raise ValueError("a password needs a username (mqtt.username)")
        if info.field_name == "password_env" and (not v or "=" in v or not v.isprintable() or len(v) > 255):
            raise ValueError("not an environment variable name")
        return v

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v


class JournalSection(Strict):
    path: Path = Path("state/journal.sqlite")
    retention_days: float = Field(30.0, gt=0)
    max_rows: int = Field(1_000_000, ge=100, le=2**63 - 1)  # an SQLite INTEGER


class AuditSection(Strict):
    dir: Path | None = Field(Path("state/audit"), description="crops + decision JSON of audited parts; null = off")
    sample_accepted: float = Field(0.0, ge=0, le=1, description="fraction of accepted parts saved too")
    max_mb: float = Field(500.0, gt=0, description="disk budget; oldest evidence is deleted first")


class CollectSection(Strict):
    dir: Path | None = Field(None, description="every judged part's crop + decision JSON, for labelling "
                             "(edge-label, docs/commissioning.md); null = off")
    sample: float = Field(1.0, gt=0, le=1, description="fraction of judged parts saved, accepted and rejected alike")
    max_mb: float = Field(2000.0, gt=0, description="disk budget; the oldest crops are deleted first")


class DriftSection(Strict):
    enabled: bool = True
    window: int = Field(100, ge=10, le=1_000_000, description="parts in the rolling window compared with the baseline")
    baseline_parts: int = Field(200, ge=10, le=1_000_000, description="first parts after start that set the line's own baseline")
    k: float = Field(2.0, gt=0, description="baseline standard deviations the window mean may move")
    reject_z: float = Field(4.0, gt=0, description="binomial z-score of the reject rate that counts as drift")


class ServiceSection(Strict):
    # Below the unit's TimeoutStartSec (60 s), or systemd kills a start that would have come up degraded.
    ready_timeout_s: float = Field(10.0, ge=0, le=50, description="wait this long for broker and camera "
                                   "before reporting READY degraded (at most 50 s: the unit's TimeoutStartSec is 60 s)")
    metrics_listen: str | None = Field(None, description="host:port of the Prometheus endpoint; null = off")

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if (not sep or not host or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536
                or not v.isprintable() or len(v) > HOST_MAX + 8):
            raise ValueError(f"{v!r}: expected host:port, e.g. 127.0.0.1:9108")
        return v


class Config(Strict):
    model: ModelSection = ModelSection()
    camera: CameraSection = CameraSection()
    sim: SimSection = SimSection()
    inspect: InspectSection = InspectSection()
    mqtt: MqttSection = MqttSection()
    journal: JournalSection = JournalSection()
    audit: AuditSection = AuditSection()
    collect: CollectSection = CollectSection()
    drift: DriftSection = DriftSection()
    service: ServiceSection = ServiceSection()
    opcua: OpcuaSection = OpcuaSection()
    recipes: RecipesSection = RecipesSection()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def _resolve(cfg: Config, base: Path) -> Config:
    """Join relative paths to `base` (the config's folder): a service's working directory is elsewhere."""
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    source = cfg.camera.source
    if is_path_source(source):  # only a file or folder is joined to the config's folder
        source = str(fix(Path(source)))

    mqtt_tls = cfg.mqtt.tls
    if mqtt_tls:
        mqtt_tls = mqtt_tls.model_copy(update={k: fix(getattr(mqtt_tls, k)) for k in ("ca_file", "cert_file", "key_file")})
    return cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"bundle": fix(cfg.model.bundle), "shadow": fix(cfg.model.shadow),
                                              "shadow_record": fix(cfg.model.shadow_record)}),
        "camera": cfg.camera.model_copy(update={"source": source}),
        "sim": cfg.sim.model_copy(update={"images": fix(cfg.sim.images)}),
        "mqtt": cfg.mqtt.model_copy(update={"password_file": fix(cfg.mqtt.password_file), "tls": mqtt_tls}),
        "journal": cfg.journal.model_copy(update={"path": fix(cfg.journal.path)}),
        "audit": cfg.audit.model_copy(update={"dir": fix(cfg.audit.dir)}),
        "collect": cfg.collect.model_copy(update={"dir": fix(cfg.collect.dir)}),
        "opcua": _resolve_opcua(cfg.opcua, fix),
        "recipes": cfg.recipes.model_copy(update={"products": {
            name: r.model_copy(update={"bundle": fix(r.bundle)}) for name, r in cfg.recipes.products.items()}}),
    })


def _resolve_opcua(o: OpcuaSection, fix: Any) -> OpcuaSection:
    users = [u.model_copy(update={"password_file": fix(u.password_file)}) for u in o.users]
    return o.model_copy(update={"users": users, "state_dir": fix(o.state_dir), "trusted_clients": fix(o.trusted_clients),
                                "certificate_file": fix(o.certificate_file), "private_key_file": fix(o.private_key_file)})


def _line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    """The line of `loc` in the file, or of the nearest key above it."""
    return next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines), None)


def _parse(raw: bytes, source: str, base: Path | None) -> tuple[Config, dict[tuple, int]]:
    """The Config in `raw` and the line of every key path, or ConfigError with every problem."""
    data, lines, repeats = read_yaml(raw, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the top level must be a mapping of sections (model, camera, ...)"])
    problems = [(line, f"{source}:{line}: {key_text(path)}: repeated key (first on line {was}); "
                 "YAML would keep only the last one, so remove or merge the other") for path, was, line in repeats]
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("int", "str", "function-after")))
            line = _line_of(lines, loc)
            key = key_text(loc) or "(top level)"
            msg = ("unknown key (not in the schema; check its spelling)" if err["type"] == "extra_forbidden"
                   else one_line(err["msg"]))
            got = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {short(err.get('input'))})"
            problems.append((line or 0, f"{source}:{line or '?'}: {key}: {msg}{got}"))
    if cfg is not None:
        for loc, msg in cross_checks(cfg):
            line = _line_of(lines, loc)
            problems.append((line or 0, f"{source}:{line or '?'}: {key_text(loc)}: {msg}"))
    if problems or cfg is None:
        raise ConfigError([text for _, text in sorted(set(problems))]) from None
    return _resolve(cfg, base or Path.cwd()), lines


def parse(text: str, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate YAML text; every problem (with `source:line: key:`) is raised at once as ConfigError."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no file can hold it
        raise ConfigError([f"{source}:{text.count(chr(10), 0, exc.start) + 1}: not UTF-8 text"]) from None
    return _parse(raw, source, base)[0]


def load_located(path: str | Path) -> tuple[Config, dict[tuple, int]]:
    """load(), and the line of every key path in the file (for problems found after parsing: edge.preflight)."""
    path = Path(path)
    raw = read_bytes(path)
    try:
        folder = path.resolve().parent
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop above it (read_bytes got through)
        folder = path.absolute().parent
    return _parse(raw, str(path), folder)


def load(path: str | Path) -> Config:
    """The Config in the file at `path`, or ConfigError listing every problem, each with file:line."""
    return load_located(path)[0]
