"""What every request may use, built once from the config: the index, the evidence folders,
the review queue, the live hub, the status watch and the sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge.hmi.config import HmiConfig
from edge.hmi.crops import Evidence
from edge.hmi.index import JournalIndex, reader
from edge.hmi.live import Hub, Poller
from edge.hmi.review import ReviewQueue
from edge.hmi.sessions import Sessions
from edge.hmi.status import StatusWatch
from edge.hmi.users import User


@dataclass
class Hmi:
    """Everything a request may use."""

    cfg: HmiConfig
    users: dict[str, User]
    sessions: Sessions
    index: JournalIndex
    evidence: Evidence
    review: ReviewQueue
    hub: Hub
    status: StatusWatch
    poller: Poller

    def db(self) -> Any:
        return reader(self.index.path)


def build(cfg: HmiConfig, users: dict[str, User]) -> Hmi:
    index = JournalIndex(cfg.journal, cfg.state_dir)
    dirs = [d for d in (cfg.collect_dir, cfg.audit_dir) if d is not None]
    evidence = Evidence(dirs)
    hub = Hub()
    status = StatusWatch(cfg.mqtt)
    return Hmi(cfg, users, Sessions(cfg.session_hours * 3600), index, evidence,
               ReviewQueue(evidence, cfg.labels_dir, cfg.state_dir), hub, status,
               Poller(index, status, hub, cfg.poll_s))
