from pathlib import Path

import pytest

from edge.config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parent.parent


def test_repo_config_yaml_is_valid_and_documented_defaults_hold() -> None:
    cfg = load(ROOT / "config.yaml")
    assert cfg.mqtt.prefix == "casting/line1/cam1"
    assert cfg.model.bundle == ROOT / "models" / "casting-cnn"


def test_every_problem_is_listed_with_its_line() -> None:
    text = "model:\n  threshold: 1.5\ncamera:\n  source: []\n  fsp: 30\ninspect:\n  mode: sometimes\nmqtt:\n  port: 70000\n"
    with pytest.raises(ConfigError) as e:
        parse(text, "line.yaml")
    problems = e.value.problems
    assert any(p.startswith("line.yaml:2: model.threshold:") and "1.5" in p for p in problems)
    assert any(p.startswith("line.yaml:4: camera.source:") for p in problems)
    assert "line.yaml:5: camera.fsp: unknown key (not in the schema; check its spelling)" in problems
    assert any(p.startswith("line.yaml:7: inspect.mode:") and "sometimes" in p for p in problems)
    assert any(p.startswith("line.yaml:9: mqtt.port:") for p in problems)


def test_cross_field_rules_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="locate: roi needs roi"):
        parse("inspect:\n  locate: roi\n")
    with pytest.raises(ConfigError, match="not a valid topic prefix"):
        parse("mqtt:\n  prefix: 'line/#'\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: not valid YAML"):
        parse("camera: [1,\n", "bad.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse("- a\n- b\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("journal:\n  path: state/j.sqlite\nmodel:\n  bundle: /abs/bundle\n")
    cfg = load(tmp_path / "c.yaml")
    assert cfg.journal.path == tmp_path / "state" / "j.sqlite"
    assert cfg.model.bundle == Path("/abs/bundle")


def test_belt_speed_reaches_the_tracker_and_must_not_be_negative() -> None:
    from edge.daemon import tracker_for  # noqa: PLC0415

    assert tracker_for(parse("inspect:\n  belt_speed_px_per_frame: 40\n").inspect).expected_speed == 40
    assert tracker_for(load(ROOT / "config.yaml").inspect).expected_speed == 0  # the documented default: learn it
    with pytest.raises(ConfigError) as e:
        parse("inspect:\n  mode: continuous\n  belt_speed_px_per_frame: -3\n", "line.yaml")
    assert any(p.startswith("line.yaml:3: inspect.belt_speed_px_per_frame:") for p in e.value.problems)


def test_belt_direction_reaches_the_tracker() -> None:
    from edge.daemon import tracker_for  # noqa: PLC0415

    assert tracker_for(parse("inspect:\n  belt_direction: right_to_left\n").inspect).direction == -1
    assert tracker_for(load(ROOT / "config.yaml").inspect).direction == 1
    with pytest.raises(ConfigError) as e:
        parse("inspect:\n  belt_direction: leftwards\n", "line.yaml")
    assert any(p.startswith("line.yaml:2: inspect.belt_direction:") and "leftwards" in p for p in e.value.problems)


def test_camera_rotation_is_a_quarter_turn() -> None:
    assert parse("camera:\n  rotate: 90\n").camera.rotate == 90
    with pytest.raises(ConfigError) as e:
        parse("camera:\n  source: sim\n  rotate: 45\n", "line.yaml")
    assert any(p.startswith("line.yaml:3: camera.rotate:") and "45" in p for p in e.value.problems), e.value.problems
