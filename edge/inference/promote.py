"""Promote a candidate bundle to the live bundle's folder, keeping the one it replaces for
rollback, and swap back in one step.

The live folder (`model.bundle`) is replaced by renames within its parent folder, never
edited in place: the candidate is copied beside it first (`<live>.incoming`), checked as the
daemon checks a bundle at reload (files, checksum, interpreter, self-check), and only then
renamed into place. The bundle it replaces becomes `<live>.previous`; an older `.previous`
moves to `<live>.history/<model id>` rather than being deleted. Rollback swaps `.previous`
and the live folder, so a second rollback re-promotes. The running daemon picks the change up
on SIGHUP (its reload self-checks again and keeps the old model if anything is wrong).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from edge.inference import bundle as bundle_fmt
from edge.inference.inspector import Inspector


class PromoteError(RuntimeError):
    """A promotion or rollback that was refused; nothing was changed."""


@dataclass(frozen=True)
class Swap:
    live: Path
    installed: str  # model id now in the live folder
    kept: str | None  # model id now in <live>.previous (None: there was none)
    unmet: tuple[str, ...] = ()  # the installed bundle's own promotion checks it missed (unmet_checks)


def previous_of(live: Path) -> Path:
    return live.with_name(live.name + ".previous")


def _checked(folder: Path, what: str) -> str:
    try:
        inspector = Inspector.load(bundle_fmt.load(folder))
        inspector.self_check()
    except (bundle_fmt.BundleError, OSError) as exc:
        raise PromoteError(f"{what} {folder}: {exc}") from exc
    return inspector.model_id


def promote(live: Path, candidate: Path) -> Swap:
    live, candidate = Path(live), Path(candidate)
    if live.resolve() == candidate.resolve():
        raise PromoteError(f"{candidate}: is the live bundle already")
    new_id = _checked(candidate, "candidate")
    old_id = _checked(live, "live bundle") if live.exists() else None
    incoming = live.with_name(live.name + ".incoming")
    shutil.rmtree(incoming, ignore_errors=True)  # a promotion interrupted earlier
    shutil.copytree(candidate, incoming, ignore=shutil.ignore_patterns("checkpoints"))
    if _checked(incoming, "copied candidate") != new_id:
        shutil.rmtree(incoming, ignore_errors=True)
        raise PromoteError(f"{candidate}: changed while it was copied; nothing promoted")
    prev = previous_of(live)
    if prev.exists():
        _to_history(live, prev)
    if live.exists():
        live.rename(prev)
    incoming.rename(live)
    return Swap(live, new_id, old_id, unmet_checks(live))


def unmet_checks(folder: Path) -> tuple[str, ...]:
    """The promotion checks an adapted bundle's report says it missed (trainer.adapt_report), each
    with its figures; none for a bundle without them. Told, not enforced: the line engineer who
    promotes may have the shadow record's evidence the held-out images lacked."""
    try:
        checks = bundle_fmt.load(folder).meta.get("metrics", {}).get("adapt", {}).get("checks", [])
    except (bundle_fmt.BundleError, OSError):
        return ()
    return tuple(f"{c.get('check')}: {c.get('figures')}" for c in checks if isinstance(c, dict) and not c.get("met"))


def rollback(live: Path) -> Swap:
    live = Path(live)
    prev = previous_of(live)
    if not prev.exists():
        raise PromoteError(f"{prev}: no previous bundle to roll back to (nothing was promoted over {live})")
    back_id = _checked(prev, "previous bundle")
    swap = live.with_name(live.name + ".swap")
    shutil.rmtree(swap, ignore_errors=True)
    kept = None
    if live.exists():
        try:
            kept = bundle_fmt.load(live).short_id
        except (bundle_fmt.BundleError, OSError):
            kept = None  # a damaged live folder is kept as .previous all the same
        live.rename(swap)
    prev.rename(live)
    if swap.exists():
        swap.rename(prev)
    return Swap(live, back_id, kept)


def _to_history(live: Path, prev: Path) -> None:
    history = live.with_name(live.name + ".history")
    history.mkdir(exist_ok=True)
    try:
        name = bundle_fmt.load(prev).short_id
    except (bundle_fmt.BundleError, OSError):
        name = "unreadable"
    dest, n = history / name, 1
    while dest.exists():
        n += 1
        dest = history / f"{name}~{n}"
    prev.rename(dest)
