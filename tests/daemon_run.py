"""Run the real daemon (`python -m edge.cli`) as a subprocess on a config written for a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from edge.inference import bundle as bundle_fmt

BUNDLE = bundle_fmt.DEFAULT_BUNDLE
DEADLINE_S = 30.0  # generous: this machine may be training in the background


def write_config(tmp: Path, port: int, prefix: str, source: Path, **over: Any) -> Path:
    cfg: dict[str, Any] = {
        "model": {"bundle": str(BUNDLE)},
        "camera": {"source": str(source), "loop": False},
        "inspect": {"mode": "continuous"},
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": prefix, "client_id": f"daemon-{tmp.name}",
                 "keepalive_s": 5, "decision_deadline_s": DEADLINE_S},
        "journal": {"path": str(tmp / "journal.sqlite")},
        "audit": {"dir": str(tmp / "audit"), "sample_accepted": 1.0},
    }
    return dump_config(tmp / "config.yaml", cfg, over)


def dump_config(path: Path, cfg: dict[str, Any], over: dict[str, dict[str, Any]]) -> Path:
    """Write `cfg` as YAML with each section of `over` merged into its own."""
    for section, values in over.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_daemon(config: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "--config", str(config), "--quiet", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"daemon did not stop within {timeout}s:\n{out[-3000:]}")
    return out


class DaemonProcess:
    """The daemon subprocess for a `with` block: stop() sends SIGTERM and collects its
    output; leaving the block kills it if it is still running (a failed assertion)."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = start_daemon(config, *args)
        self.out = ""

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.out = finish(self.proc)

    def __getattr__(self, name: str) -> Any:  # send_signal, wait, poll, returncode, pid
        return getattr(self.proc, name)

    def join(self, timeout: float = 90) -> str:
        """Wait for the daemon to stop by itself (a non-looping video ended)."""
        self.out = finish(self.proc, timeout)
        return self.out

    def stop(self, timeout: float = 30) -> str:
        self.proc.send_signal(signal.SIGTERM)
        self.out = finish(self.proc, timeout)
        return self.out


def drawn_video(directory: Path, parts: int = 4) -> Path:
    """A video of drawn parts (defect, ok, ...) on the simulated line: no dataset needed."""
    from edge.vision.simulate import (  # noqa: PLC0415
        DATASET_BACKDROP_LEVEL,
        DEMO_CONTEXT,
        SimulatedLine,
        synthetic_part,
        write_video,
    )

    drawn = [synthetic_part(i, defect=i % 2 == 0) for i in range(parts)]
    sim = SimulatedLine(drawn, [None] * parts, speed_px=60, diameter_px=260, belt_level=DATASET_BACKDROP_LEVEL,
                        context=DEMO_CONTEXT, seed=1)
    video = directory / "drawn.avi"
    write_video(video, (f for f, _t in sim), fps=25)
    return video


def still_part_video(path: Path) -> Path:
    """A defective drawn part standing on the inspection line: every trigger gets a model verdict."""
    import numpy as np  # noqa: PLC0415

    from edge.vision.simulate import (  # noqa: PLC0415
        DATASET_BACKDROP_LEVEL,
        belt,
        place_part,
        synthetic_part,
        write_video,
    )
    from edge.vision.simulate import camera as camera_fx  # noqa: PLC0415

    scene = place_part(belt(level=DATASET_BACKDROP_LEVEL), synthetic_part(3, defect=True), 640, 360, 300, 0,
                       context=1.2)
    rng = np.random.default_rng(0)
    write_video(path, [camera_fx(scene, noise=rng.normal(0, 1.5, scene.shape).astype(np.float32))
                       for _ in range(30)], fps=25)
    return path
