"""Running under systemd: readiness, watchdog, status line, and live model reload.

The watchdog is pinged from the inspection loop itself (`tick`), never from a timer
thread, so a loop stuck on a camera, the model or the disk stops the pings and systemd
restarts the service. Reload (SIGHUP) is requested from the signal handler and carried
out by the loop between two parts, so no part sees half a model.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.config import Config, ConfigError, load
from edge.inference import bundle as bundle_fmt
from edge.inference.inspector import Inspector
from edge.inference.override import ThresholdRefused, announce
from edge.inference.recipes import RecipeBook, RecipeError, RecipeSpec
from edge.ops.notify import Notifier, watchdog_interval_s

if TYPE_CHECKING:
    from edge.daemon import Daemon

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0
LIVE_SECTIONS = ("model", "recipes")  # applied by a reload; the others need a restart


def summary(status: dict[str, Any]) -> str:
    """One line for `systemctl status`."""
    cam = status.get("camera", {})
    fault = f", camera fault {cam['fault']}" if cam.get("fault") else ""
    if status.get("delivery_faults"):
        fault += f", delivery fault {' '.join(status['delivery_faults'])}"
    return (f"model {status.get('model')}: {status.get('parts', 0)} parts, {status.get('reject', 0)} rejected, "
            f"{status.get('faults', 0)} faults; camera {cam.get('fps', 0)} fps{fault}")


class Lifecycle:
    def __init__(self, notifier: Notifier | None = None, watchdog_s: float | None = None) -> None:
        self.notifier = notifier or Notifier()
        self.watchdog_s = watchdog_s if watchdog_s is not None else watchdog_interval_s()
        self.reload_requested = threading.Event()
        self._last_ping = 0.0
        self._last_status = 0.0
        self.pings = 0

    def ready(self, status: str) -> None:
        self.notifier.ready(status)
        log.info("ready", extra={"status": status, "watchdog_s": self.watchdog_s})

    def tick(self, daemon: Daemon) -> None:
        """Called by the inspection loop on every pass: watchdog and status line."""
        now = time.monotonic()
        if self.watchdog_s and now - self._last_ping >= self.watchdog_s:
            if self.notifier.watchdog():
                self.pings += 1
            self._last_ping = now
        if self.notifier.enabled and now - self._last_status >= STATUS_EVERY_S:
            self.notifier.status(summary(daemon.status()))
            self._last_status = now

    def stopping(self) -> None:
        self.notifier.stopping()


def recipe_specs(cfg: Config) -> list[RecipeSpec]:
    """cfg.recipes.products as the inference room's specs (empty without recipes)."""
    specs = []
    for name, r in cfg.recipes.products.items():
        locate = cfg.inspect.locate_config(r.min_diameter_px, r.max_diameter_px)
        specs.append(RecipeSpec(name, Path(r.bundle), r.threshold, r.accept_validation_escapes, locate,
                                r.roi if r.roi is not None else cfg.inspect.roi, ("recipes", "products", name),
                                r.threshold_policy))
    return specs


def load_recipes(cfg: Config) -> RecipeBook | None:
    """Every recipe of the config loaded and self-checked (None without recipes); RecipeError names the key."""
    specs = recipe_specs(cfg)
    if not specs:
        return None
    book = RecipeBook.load(specs, cfg.model.threads)
    for recipe in book:
        if recipe.inspector.threshold_check is not None:
            announce(recipe.inspector.threshold_check, f"{recipe.model_id} (recipe {recipe.name})")
    return book


def reload_model(daemon: Daemon, config_path: Path, current: Config, notifier: Notifier) -> Config:
    """Load the config and bundle at `config_path`, self-check, then switch atomically.

    Anything wrong (config, bundle files, checksum, self-check) is refused with one log
    line that names the problem and the model that keeps running. Returns the config now
    in force.
    """
    notifier.send(RELOADING=1, MONOTONIC_USEC=int(time.monotonic() * 1e6))
    old = daemon.inspector
    try:
        cfg = load(config_path)
        book = load_recipes(cfg)
        if book is None:
            new = Inspector.load(bundle_fmt.load(cfg.model.bundle), cfg.model.threshold, cfg.model.threads,
                                 cfg.model.accept_validation_escapes)
            new.self_check()
            book = RecipeBook.single(new, daemon.recipe.locate, daemon.recipe.roi)
        elif daemon.recipe.name not in book:
            raise RecipeError(("recipes", "products"), f"the recipe in force, {daemon.recipe.name!r}, is not in the "
                              "reloaded config: select another recipe first, then reload")
        if book.configured != daemon.recipes.configured:
            raise RecipeError(("recipes", "products"), "recipes turned on or off: that needs a restart")
    except (ConfigError, bundle_fmt.BundleError, OSError, ThresholdRefused, RecipeError) as exc:
        problems = "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc)
        log.error("reload refused: keeping the running model",
                  extra={"model": old.model_id, "config": str(config_path), "error": problems})
        notifier.ready(f"reload refused, still on model {old.model_id}: {problems}"[:400])
        return current
    restart = [s for s in type(cfg).model_fields if s not in LIVE_SECTIONS and getattr(cfg, s) != getattr(current, s)]
    if restart:
        log.warning("reload: these sections changed and apply only after a restart", extra={"sections": restart})
    daemon.replace_recipes(book)  # reference swaps: the next part uses the new model entirely
    new = daemon.inspector
    if daemon.drift is not None:  # same thread as observe(): between two parts
        daemon.drift.model_changed(new.bundle.meta.get("image_stats"))
    if new.threshold_check is not None and not book.configured:  # recipes: announced by load_recipes
        announce(new.threshold_check, new.model_id)
    log.info("model reloaded", extra={"old": old.model_id, "new": new.model_id, "threshold": new.threshold,
                                      "bundle": str(new.bundle.path)})
    notifier.ready(f"reloaded: model {new.model_id}")
    return cfg.model_copy(update={s: getattr(current, s) for s in restart})


