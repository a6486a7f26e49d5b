"""Logging set-up: one line per event, structured context appended as key=value."""

from __future__ import annotations

import logging
import sys

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class ContextFormatter(logging.Formatter):
    """Appends the `extra={...}` fields of a record, so context survives plain text logs."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        ctx = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if not ctx:
            return base
        return base + " " + " ".join(f"{k}={v}" for k, v in ctx.items())


def setup(level: int | str = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
