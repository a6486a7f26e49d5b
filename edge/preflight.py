"""What can be checked before start that the schema cannot: this box's files, folders and bundle.

edge.config checks what the file says; this checks what it points at, so that `--check-config`
refuses a config the daemon could not start with (the shipped config copied to
/etc/edge-inspect, whose relative `models/casting-cnn` no longer resolves; a camera file that
is not there; a journal under a plain file; an unreadable password or TLS file) and the daemon
refuses it with the same lines before anything starts. Each problem is one line,
`file:line: key: path: what is wrong`.

Nothing is created or changed: a folder that does not exist yet passes where it could be
created. Checked as the user running the check (run it as the service user to see what the
service can reach). Not checked, because the box's state at start decides them and the daemon
starts degraded and reconnects: a camera device or stream, the broker, `mqtt.password_env`
(the unit's environment is not the shell's), the metrics port.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from edge.config import MQTT_STRING_MAX, Config, ConfigError, load_located
from edge.vision.sources import is_path_source

if TYPE_CHECKING:
    from edge.inference.inspector import Inspector

Problem = tuple[tuple[str, ...], str]  # (key path, message)


def load_checked(path: str | Path, loaded: list[tuple[str, Inspector]] | None = None) -> Config:
    """The config at `path` if it validates and passes check(); else ConfigError with every problem.

    `loaded` collects each bundle the check loaded, by role (see check), for describe().
    """
    cfg, lines = load_located(path)
    problems = check(cfg, str(path), lines, _folder(Path(path)), loaded)
    if problems:
        raise ConfigError(problems)
    return cfg


def check(cfg: Config, source: str = "<config>", lines: Mapping[tuple, int] | None = None,
          folder: Path | None = None, loaded: list[tuple[str, Inspector]] | None = None) -> list[str]:
    """Every problem found, as `source:line: key: message` (the line where the key is in the file).

    `folder` is the config file's folder: a missing path under it gets the reminder that
    relative paths are taken from there, not from the working directory.
    """
    found: list[Problem] = []
    found += _camera(cfg)
    found += _writable_file(("journal", "path"), Path(cfg.journal.path))
    if cfg.audit.dir is not None:
        found += _creatable_folder(("audit", "dir"), Path(cfg.audit.dir))
    if cfg.collect.dir is not None:
        found += _creatable_folder(("collect", "dir"), Path(cfg.collect.dir))
    found += _mqtt_files(cfg)
    found += _bundle(cfg, loaded if loaded is not None else [])
    out = []
    for key, message in found:
        line = _line(lines or {}, key)
        where = f"{source}:{line}" if line else source
        out.append((line or 0, f"{where}: {'.'.join(key)}: {message}{_relative_hint(message, folder)}"))
    return [text for _, text in sorted(set(out))]


# --- the checks ---------------------------------------------------------------------

def _camera(cfg: Config) -> list[Problem]:
    source = cfg.camera.source
    if source == "sim":
        images = cfg.sim.images
        return [] if images is None else _readable(("sim", "images"), Path(images), want="folder")
    if is_path_source(source):  # a device, URL or pipeline is the camera's business at start
        return _readable(("camera", "source"), Path(str(source)), want="file or folder")
    return []


def _bundle(cfg: Config, loaded: list[tuple[str, Inspector]]) -> list[Problem]:
    """Load the bundle as the daemon does: files, checksum, the threshold check, interpreter, self-check."""
    from edge.inference import bundle as bundle_fmt  # noqa: PLC0415 - the interpreter is only needed here
    from edge.inference.inspector import Inspector  # noqa: PLC0415
    from edge.inference.override import ThresholdRefused  # noqa: PLC0415

    if cfg.recipes.products:
        return _recipes(cfg, loaded) + _shadow(cfg, loaded)
    key = ("model", "bundle")
    try:
        b = bundle_fmt.load(cfg.model.bundle)
        inspector = Inspector.load(b, cfg.model.threshold, cfg.model.threads, cfg.model.accept_validation_escapes)
        inspector.self_check()
        loaded.append(("model", inspector))
    except ThresholdRefused as exc:
        return [(("model", "threshold"), str(exc))]
    except bundle_fmt.BundleError as exc:
        return [(key, str(exc))]
    except OSError as exc:
        return [(key, f"{cfg.model.bundle}: cannot read: {exc.strerror or exc}")]
    except Exception as exc:  # noqa: BLE001 - the runtime's own errors (a model it cannot build), as one line
        return [(key, f"{cfg.model.bundle}: cannot load the model: {type(exc).__name__}: {exc}"[:400])]
    return _shadow(cfg, loaded)


def describe(loaded: list[tuple[str, Inspector]]) -> list[str]:
    """What the daemon would run, one line per bundle check() loaded (model, each recipe, shadow).

    A line engineer checking a config wants to see which model decides, at which threshold and
    with which of the bundle's options, before the line runs on it.
    """
    return [f"{role}: {_running(inspector)}" + ("; never actuates" if role == "shadow" else "")
            for role, inspector in loaded]


def _running(inspector: Inspector) -> str:
    """One bundle as it will decide: id, threshold in force, views, guard, input, seal."""
    from edge.inference.bundle import SEAL_KEY  # noqa: PLC0415

    b, spec = inspector.bundle, inspector.classifier.spec
    t = inspector.threshold
    whose = "the bundle's" if t == b.threshold else f"override; the bundle's {b.threshold:.8g}"
    views = f"{spec.views} view(s)" + (" (the highest decides)" if spec.aggregate == "max" else "")
    views += ", logit output" if spec.output == "logit" else ""
    parts = [f"{b.path} ({b.short_id})", f"threshold {t:.8g} ({whose})", views,
             "guard on" if inspector.judge.guard is not None else "no guard",
             f"part-only, {spec.finder} rim finder" + (", tones matched" if spec.tone is not None else "")
             if spec.part_only else "whole crop",
             "sealed" if SEAL_KEY in b.meta else "not sealed (made before 2026-12-07)"]
    return ", ".join(parts)


def _recipes(cfg: Config, loaded: list[tuple[str, Inspector]]) -> list[Problem]:
    """Each recipe's bundle and threshold, loaded as the daemon loads them: every problem, by key."""
    from edge.inference.recipes import RecipeError  # noqa: PLC0415 - the interpreter is only needed here
    from edge.lifecycle import recipe_specs  # noqa: PLC0415

    found: list[Problem] = []
    for spec in recipe_specs(cfg):
        try:
            loaded.append((f"recipe {spec.name}", spec.load(cfg.model.threads).inspector))
        except RecipeError as exc:
            found.append((exc.key, exc.message))
        except Exception as exc:  # noqa: BLE001 - the runtime's own errors, as one line
            found.append((spec.key + ("bundle",), f"{spec.bundle}: cannot load the model: {type(exc).__name__}: "
                          f"{exc}"[:400]))
    return found


def _shadow(cfg: Config, loaded: list[tuple[str, Inspector]]) -> list[Problem]:
    from edge.inference import bundle as bundle_fmt  # noqa: PLC0415
    from edge.inference.inspector import Inspector  # noqa: PLC0415
    from edge.inference.override import ThresholdRefused  # noqa: PLC0415

    if cfg.model.shadow is not None:
        shadow_key = ("model", "shadow")
        try:
            shadow = Inspector.load(bundle_fmt.load(cfg.model.shadow), threads=cfg.model.threads)
            shadow.self_check()
            loaded.append(("shadow", shadow))
        except (bundle_fmt.BundleError, ThresholdRefused) as exc:
            return [(shadow_key, str(exc))]
        except OSError as exc:
            return [(shadow_key, f"{cfg.model.shadow}: cannot read: {exc.strerror or exc}")]
        return _writable_file(("model", "shadow_record"), Path(cfg.model.shadow_record))
    return []


def _mqtt_files(cfg: Config) -> list[Problem]:
    m = cfg.mqtt
    found: list[Problem] = []
    if m.password_file is not None:
        key = ("mqtt", "password_file")
        found += _readable(key, Path(m.password_file), want="file")
        if not found:
            found += _password(key, Path(m.password_file))
    tls = m.tls
    if tls is None:
        return found
    files = {name: getattr(tls, name) for name in ("ca_file", "cert_file", "key_file") if getattr(tls, name)}
    before = len(found)
    for name, p in files.items():
        found += _readable(("mqtt", "tls", name), Path(p), want="file")
    if len(found) == before:  # each file readable: now whether they are a CA, a certificate and its key
        from edge.delivery.mqtt_settings import MqttConfigError, MqttSettings, tls_context  # noqa: PLC0415

        try:
            tls_context(MqttSettings(tls=True, tls_ca=tls.ca_file, tls_cert=tls.cert_file, tls_key=tls.key_file,
                                     tls_insecure=tls.insecure), quiet=True)
        except MqttConfigError as exc:
            found.append((("mqtt", "tls"), str(exc)))
    return found


def _password(key: tuple[str, ...], path: Path) -> list[Problem]:
    """The password file as the publisher reads it: UTF-8, at most an MQTT string once stripped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            data = os.read(fd, MQTT_STRING_MAX + 3)
        finally:
            os.close(fd)
    except OSError as exc:
        return [(key, f"{path}: cannot read: {exc.strerror or exc}")]
    if len(data.rstrip(b"\r\n")) > MQTT_STRING_MAX:
        return [(key, f"{path}: longer than an MQTT password may be ({MQTT_STRING_MAX} bytes)")]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return [(key, f"{path}: not UTF-8 text")]
    return []


# --- paths --------------------------------------------------------------------------

def _stat(path: Path) -> os.stat_result | None:
    """stat(), None where the path does not exist (a parent that is a file counts as not existing)."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _readable(key: tuple[str, ...], path: Path, want: str) -> list[Problem]:
    """`path` exists, is what `want` names (file, folder, or either) and can be read."""
    try:
        st = _stat(path)
    except OSError as exc:
        return [(key, f"{path}: cannot look at it: {exc.strerror or exc}")]
    if st is None:
        return [(key, f"{path}: no such {want}")]
    is_dir = stat.S_ISDIR(st.st_mode)
    if want == "folder" and not is_dir:
        return [(key, f"{path}: not a folder")]
    if want == "file" and not stat.S_ISREG(st.st_mode):
        return [(key, f"{path}: not a regular file")]
    if not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
        return [(key, f"{path}: cannot read it: permission denied")]
    return []


def _creatable_folder(key: tuple[str, ...], folder: Path, shown: Path | None = None) -> list[Problem]:
    """`folder` is a folder we can write in, or the nearest existing one above it is.

    `shown` is the configured path the message names (the journal file, for its folder).
    """
    shown = shown or folder
    for above in (folder, *folder.parents):
        try:
            st = _stat(above)
        except OSError as exc:
            return [(key, f"{shown}: cannot look at {above}: {exc.strerror or exc}")]
        if st is None:
            continue
        if not stat.S_ISDIR(st.st_mode):
            return [(key, f"{shown}: cannot create it: part of the path is a file, not a folder ({above})")]
        if not os.access(above, os.W_OK | os.X_OK):
            return [(key, f"{shown}: cannot {'write in' if above == folder else 'create folders in'} {above}: "
                          "permission denied or read-only")]
        return []
    return []


def _writable_file(key: tuple[str, ...], path: Path) -> list[Problem]:
    """A file the daemon creates or opens read-write (the journal), with SQLite's files beside it."""
    try:
        st = _stat(path)
    except OSError as exc:
        return [(key, f"{path}: cannot look at it: {exc.strerror or exc}")]
    if st is not None and not stat.S_ISREG(st.st_mode):
        return [(key, f"{path}: not a regular file")]
    if st is not None and not os.access(path, os.R_OK | os.W_OK):
        return [(key, f"{path}: cannot read and write it: permission denied or read-only")]
    return _creatable_folder(key, path.parent, shown=path)


# --- messages -----------------------------------------------------------------------

def _line(lines: Mapping[tuple, int], key: tuple[str, ...]) -> int | None:
    """The key's line, else its section's: a default is not in the file."""
    for i in range(len(key), 0, -1):
        if key[:i] in lines:
            return lines[key[:i]]
    return None


def _folder(path: Path) -> Path:
    try:
        return path.resolve().parent
    except (OSError, RuntimeError):
        return path.absolute().parent


def _relative_hint(message: str, folder: Path | None) -> str:
    """Remind that relative paths are the config folder's, where a missing path lies under it."""
    missing = "no such" in message or "not found" in message
    if folder is None or not missing or not message.startswith(f"{folder}{os.sep}"):
        return ""
    return f" (relative paths are taken from the config file's folder, {folder})"
