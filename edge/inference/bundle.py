"""The model bundle: a folder with `model.tflite` and its sidecar `model.json`.

The trainer writes bundles and the edge loads them; both use this module so the format
has one definition. Loading checks every field and the tflite file's sha256 and says
in plain words what is wrong, because a line must never run a model it cannot vouch for.

The fields that decide a part (threshold, views, quantisation, the guard's limits, ...) are
sealed by a digest the trainer writes beside them: a threshold typed into model.json by hand
would run without the validation check a config override gets (edge.inference.override), so
a bundle whose deciding fields no longer match their seal is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MODEL_FILE = "model.tflite"
SIDECAR_FILE = "model.json"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "casting-cnn"
SEAL_KEY = "decision_digest"
# Every field a verdict depends on besides the model file (sealed by its own sha256).
DECIDING_FIELDS = ("image_size", "color", "class_names", "positive_class", "threshold", "decision_rule",
                   "input", "output", "views", "guard", "sha256")
# Deciding fields added after bundles were first sealed: absent means their default (view_aggregate: mean).
OPTIONAL_DECIDING_FIELDS = ("view_aggregate",)

log = logging.getLogger(__name__)

REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "image_size": list,
    "color": str,
    "positive_class": str,
    "class_names": list,
    "threshold": (int, float),
    "input": dict,
    "output": dict,
    "sha256": str,
    "architecture": str,
    "training": dict,
    "metrics": dict,
}


class BundleError(ValueError):
    """A bundle that must not be used; the message says which file and field is wrong."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    meta: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.meta["image_size"]
        return int(h), int(w)

    @property
    def sha256(self) -> str:
        return str(self.meta["sha256"])

    @property
    def short_id(self) -> str:
        return self.sha256[:12]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def decision_digest(meta: dict[str, Any]) -> str:
    """sha256 over the deciding fields as canonical JSON (absent fields count as null; an optional
    one, OPTIONAL_DECIDING_FIELDS, counts only where present, so older seals stay valid)."""
    doc = {k: meta.get(k) for k in DECIDING_FIELDS}
    doc.update({k: meta[k] for k in OPTIONAL_DECIDING_FIELDS if k in meta})
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()


def _check_seal(meta: dict[str, Any], sidecar: Path) -> None:
    if SEAL_KEY not in meta:
        log.warning("bundle has no decision seal: a hand edit of its threshold or guard cannot be detected "
                    "(bundles written before 2026-12-07; re-export or re-adapt to seal it)",
                    extra={"bundle": str(sidecar.parent)})
        return
    if meta[SEAL_KEY] != decision_digest(meta):
        raise BundleError(
            f"{sidecar}: the fields that decide a part (threshold {meta.get('threshold')!r}, views "
            f"{meta.get('views', 1)!r}, input, output, guard, ...) do not match the '{SEAL_KEY}' the trainer "
            f"sealed them with: model.json was edited after training. Restore it from where the bundle came "
            f"from; a threshold of your own belongs in the config (model.threshold), where it is judged "
            f"against the bundle's validation scores")


def _check_quant(meta: dict[str, Any], key: str, where: str) -> list[str]:
    q = meta.get(key, {})
    errors = []
    if q.get("dtype") not in ("uint8", "int8"):
        errors.append(f"{where}: '{key}.dtype' must be 'uint8' or 'int8', got {q.get('dtype')!r}")
    scale = q.get("scale")
    if not isinstance(scale, (int, float)) or not scale > 0 or not math.isfinite(scale):
        errors.append(f"{where}: '{key}.scale' must be a positive number, got {scale!r}")
    if not isinstance(q.get("zero_point"), int):
        errors.append(f"{where}: '{key}.zero_point' must be an integer, got {q.get('zero_point')!r}")
    return errors


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_image_stats(meta: dict[str, Any], where: str) -> list[str]:
    """`image_stats` is optional (older bundles lack it) but the drift watch trusts it, so a
    damaged entry is refused here rather than crashing the daemon at start or on reload."""
    st = meta.get("image_stats")
    if st is None:
        return []
    if not isinstance(st, dict):
        return [f"{where}: 'image_stats' must be an object, got {type(st).__name__}"]
    errors = []
    for name in ("brightness", "contrast", "sharpness"):
        entry = st.get(name)
        if entry is None:
            continue
        if not isinstance(entry, dict) or not _finite(entry.get("mean")) or not _finite(entry.get("std")) \
                or entry["std"] < 0:
            errors.append(f"{where}: 'image_stats.{name}' must be {{\"mean\": number, \"std\": number >= 0}}, "
                          f"got {entry!r}")
    for key in ("fit_mean", "fit_std"):
        if key in st and not _finite(st[key]):
            errors.append(f"{where}: 'image_stats.{key}' must be a number, got {st[key]!r}")
    return errors


def validate(meta: dict[str, Any], where: str = SIDECAR_FILE) -> list[str]:
    """Every problem with a sidecar's fields, as readable sentences; [] when valid."""
    errors = []
    for key, kind in REQUIRED.items():
        if key not in meta:
            errors.append(f"{where}: missing field '{key}'")
        elif not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            errors.append(f"{where}: field '{key}' has the wrong type ({type(meta[key]).__name__})")
    if errors:
        return errors
    if meta["format_version"] != FORMAT_VERSION:
        errors.append(
            f"{where}: format_version {meta['format_version']} is not supported "
            f"(this edge-inspect reads version {FORMAT_VERSION})"
        )
    size = meta["image_size"]
    if len(size) != 2 or not all(isinstance(v, int) and 16 <= v <= 4096 for v in size):
        errors.append(f"{where}: 'image_size' must be [height, width] in pixels, got {size!r}")
    if meta["color"] != "grayscale":
        errors.append(f"{where}: 'color' must be 'grayscale', got {meta['color']!r}")
    if meta["positive_class"] not in meta["class_names"]:
        errors.append(
            f"{where}: 'positive_class' {meta['positive_class']!r} is not one of "
            f"'class_names' {meta['class_names']!r}"
        )
    t = meta["threshold"]
    if not (0.0 < t <= 1.0):
        errors.append(f"{where}: 'threshold' must be in (0, 1], got {t!r}")
    errors += _check_quant(meta, "input", where)
    errors += _check_quant(meta, "output", where)
    errors += _check_image_stats(meta, where)
    if len(str(meta["sha256"])) != 64:
        errors.append(f"{where}: 'sha256' is not a sha256 hex digest")
    return errors


def load(path: str | Path | None = None, verify_hash: bool = True) -> Bundle:
    """Load and fully validate a bundle folder (or its model.json); BundleError if unusable."""
    p = Path(path) if path is not None else DEFAULT_BUNDLE
    if p.is_file() and p.name in (SIDECAR_FILE, MODEL_FILE):
        p = p.parent
    if not p.is_dir():
        raise BundleError(f"{p}: bundle folder not found")
    sidecar, model = p / SIDECAR_FILE, p / MODEL_FILE
    for f in (sidecar, model):
        if not f.is_file():
            raise BundleError(f"{f}: missing from the bundle")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{sidecar}: cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{sidecar}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"{sidecar}: must hold a JSON object")
    errors = validate(meta, str(sidecar))
    if errors:
        raise BundleError("; ".join(errors))
    _check_seal(meta, sidecar)
    if verify_hash:
        actual = sha256_file(model)
        if actual != meta["sha256"]:
            raise BundleError(
                f"{model}: sha256 {actual[:12]}... does not match {meta['sha256'][:12]}... "
                f"recorded in {sidecar.name}: the model file was changed or corrupted"
            )
    return Bundle(p, meta)


def write(folder: str | Path, tflite: bytes, meta: dict[str, Any]) -> Bundle:
    """Write model.tflite and model.json (sha256 filled in, sealed), validated, atomically per file."""
    folder = Path(folder)
    meta = dict(meta, format_version=FORMAT_VERSION, sha256=hashlib.sha256(tflite).hexdigest())
    text = _sealed_text(folder, meta)
    folder.mkdir(parents=True, exist_ok=True)
    _replace(folder / MODEL_FILE, tflite)
    _replace(folder / SIDECAR_FILE, text.encode())
    return Bundle(folder, meta)


def write_sidecar(folder: str | Path, meta: dict[str, Any]) -> Bundle:
    """Rewrite model.json beside an existing model.tflite (records added after training), sealed anew.

    Only for tools that vouch for what they change: `edge-train scores` adds validation scores it
    checked against the bundle's own confusion.
    """
    folder, meta = Path(folder), dict(meta)
    text = _sealed_text(folder, meta)
    _replace(folder / SIDECAR_FILE, text.encode())
    return load(folder)


def _sealed_text(folder: Path, meta: dict[str, Any]) -> str:
    """model.json's text with the seal set in `meta`; BundleError naming what is wrong."""
    errors = validate(meta, str(folder / SIDECAR_FILE))
    try:
        meta[SEAL_KEY] = decision_digest(meta)
        text = _dumps(meta)
    except ValueError:  # NaN/Infinity: not JSON a strict reader (or a PLC's) accepts
        errors.append(f"{folder / SIDECAR_FILE}: a field holds a non-finite number (NaN or infinity)")
        text = ""
    if errors:
        raise BundleError("; ".join(errors))
    return text


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _dumps(meta: dict[str, Any]) -> str:
    return json.dumps(meta, indent=2, sort_keys=False, allow_nan=False) + "\n"
