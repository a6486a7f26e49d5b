"""`edge-train` in an edge-only install (no `train` extra): one line naming the extra, exit 2.

The missing extra is simulated for the real console script, not mocked: PYTHONPATH puts
packages named tensorflow, keras, matplotlib and PIL first on the path, and each raises the
ModuleNotFoundError that Python raises for a module that is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_split

EXTRA = ("tensorflow", "keras", "matplotlib", "PIL")


def edge_train() -> str:
    script = Path(sys.executable).parent / "edge-train"
    found = str(script) if script.is_file() else shutil.which("edge-train")
    if not found:
        pytest.skip("the edge-train console script is not installed (pip install -e .)")
    return found


@pytest.fixture
def without_extra(tmp_path: Path) -> dict[str, str]:
    """An environment in which every module of the `train` extra is missing."""
    shadow = tmp_path / "no-train-extra"
    for name in EXTRA:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    probe = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert "ModuleNotFoundError: No module named 'tensorflow'" in probe.stderr  # the simulation holds
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([edge_train(), *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_fit_without_the_train_extra_names_it_in_one_line_and_exits_2(without_extra: dict[str, str],
                                                                       tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    write_split(data / "train", 4)
    write_split(data / "test", 2)
    for extra in ([], ["--resume"], ["--epochs", "0"]):  # the missing extra comes first, before any other check
        r = run(without_extra, "fit", "--data", str(data), "--out", str(out), *extra)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "edge-train fit needs the trainer's extra: pip install -e '.[train]'" in lines[0]
        assert "(missing module: keras)" in lines[0] or "(missing module: tensorflow)" in lines[0]
        assert r.stdout == ""
        assert not out.exists()


def test_help_of_every_subcommand_needs_no_tensorflow(without_extra: dict[str, str]) -> None:
    for args, expect in ((["--help"], "{fit,compare,adapt,scores}"), (["fit", "--help"], "--steps-per-epoch"),
                         (["compare", "--help"], "champion"), (["scores", "--help"], "validation"),
                         (["adapt", "--help"], "--per-class")):
        r = run(without_extra, *args)
        assert r.returncode == 0 and expect in r.stdout and r.stderr == "", (args, r.stderr)


def test_compare_runs_without_the_train_extra(without_extra: dict[str, str], casting_data: Path) -> None:
    """compare runs the bundles on LiteRT, as on the line: the edge install is enough."""
    r = run(without_extra, "compare", "models/casting-cnn-crisp", "models/casting-cnn", "--data", str(casting_data),
            "--resamples", "20")
    assert r.returncode == 0, r.stderr
    assert "champion   models/casting-cnn-crisp" in r.stdout and "Traceback" not in r.stderr
