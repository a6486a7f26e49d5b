from pathlib import Path

import pytest

from edge.config import Config, ConfigError, load, parse

ROOT = Path(__file__).resolve().parents[2]


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
    roi = "  locate: roi\n  roi: [400, 100, 500, 500]\n"
    assert parse("inspect:\n  mode: trigger\n" + roi).inspect.roi == (400, 100, 500, 500)
    with pytest.raises(ConfigError, match="c.yaml:1: inspect: .*locate: roi is for trigger mode"):
        parse("inspect:\n  mode: continuous\n" + roi, "c.yaml")  # the daemon would ignore the ROI
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


def test_a_repeated_key_is_a_problem_naming_both_lines() -> None:
    # safe_load keeps the last of two keys: a second `mqtt:` block pasted below the first
    # would silently replace it (host, prefix, client id), so it must not validate.
    text = ("mqtt:\n  prefix: casting/line2/cam3\n  client_id: cam3\n"
            "model:\n  threshold: 0.5\n  threshold: 0.9\n"
            "mqtt:\n  host: broker.line1.local\n")
    with pytest.raises(ConfigError) as e:
        parse(text, "line.yaml")
    problems = e.value.problems
    assert any(p.startswith("line.yaml:7: mqtt: repeated key") and "line 1" in p for p in problems), problems
    assert any(p.startswith("line.yaml:6: model.threshold: repeated key") and "line 5" in p for p in problems), problems
    with pytest.raises(ConfigError, match=r"c.yaml:2: camera\.source: repeated key .*line 1"):
        parse("camera: {source: sim,\n  source: 0}\n", "c.yaml")  # flow style too


def test_password_and_client_certificate_pairs_are_checked_with_their_line() -> None:
    # These passed --check-config and then stopped the daemon at start with a traceback.
    with pytest.raises(ConfigError) as e:
        parse("mqtt:\n  host: 127.0.0.1\n  password_file: pw.txt\n", "line.yaml")
    assert any(p.startswith("line.yaml:3: mqtt.password_file:") and "username" in p for p in e.value.problems)
    with pytest.raises(ConfigError) as e:
        parse("mqtt:\n  username: cam1\n  password_env: PW\n  password_file: pw.txt\n", "line.yaml")
    assert any(p.startswith("line.yaml:3: mqtt.password_env:") and "not both" in p for p in e.value.problems)
    with pytest.raises(ConfigError) as e:
        parse("mqtt:\n  host: 127.0.0.1\n  tls: {cert_file: client.pem}\n", "line.yaml")
    assert any(p.startswith("line.yaml:3: mqtt.tls.key_file:") and "go together" in p for p in e.value.problems)
    with pytest.raises(ConfigError, match=r"line.yaml:4: mqtt\.tls\.key_file:.*cert_file"):
        parse("mqtt:\n  tls:\n    ca_file: ca.pem\n    key_file: client.key\n", "line.yaml")
    ok = parse("mqtt:\n  username: cam1\n  password_env: PW\n  tls: {cert_file: c.pem, key_file: c.key}\n")
    assert ok.mqtt.username == "cam1"


def _float_fields() -> list[tuple[str, str]]:
    """Every float setting of the schema, found by type so a new one is covered too."""
    out = []
    for section, sf in Config.model_fields.items():
        model = sf.annotation
        for name, f in getattr(model, "model_fields", {}).items():
            if "float" in str(f.annotation) or f.annotation is float:
                out.append((section, name))
    return out


def test_the_schema_has_the_float_fields_this_test_expects() -> None:
    fields = _float_fields()
    for expected in [("camera", "reconnect_max_s"), ("inspect", "max_trigger_age_s"),
                     ("inspect", "belt_speed_px_per_frame"), ("drift", "reject_z"), ("sim", "speed_px"),
                     ("journal", "retention_days"), ("audit", "max_mb"), ("model", "threshold")]:
        assert expected in fields


@pytest.mark.parametrize(("section", "name"), _float_fields())
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_no_float_setting_accepts_infinity_or_nan(section: str, name: str, value: str) -> None:
    # audit.max_mb: .inf validated, then int(inf * 2**20) stopped the daemon with OverflowError.
    with pytest.raises(ConfigError) as e:
        parse(f"{section}:\n  {name}: {value}\n", "line.yaml")
    assert any(p.startswith(f"line.yaml:2: {section}.{name}:") for p in e.value.problems), e.value.problems


def test_backoff_is_bounded_so_the_camera_thread_can_wait_for_it() -> None:
    # Event.wait() raises OverflowError for a huge timeout, which would end reconnecting for good.
    with pytest.raises(ConfigError, match=r"line.yaml:3: camera\.reconnect_max_s:"):
        parse("camera:\n  reconnect_min_s: 1\n  reconnect_max_s: 1e300\n", "line.yaml")


def test_relative_camera_source_resolves_against_the_config_folder(tmp_path: Path) -> None:
    # Under systemd the working directory is /var/lib/edge-inspect, not the config's folder.
    def source(spec: str) -> str | int:
        (tmp_path / "c.yaml").write_text(f"camera:\n  source: {spec}\n")
        return load(tmp_path / "c.yaml").camera.source

    assert source("videos/belt.avi") == str(tmp_path / "videos" / "belt.avi")
    assert source("frames") == str(tmp_path / "frames")
    assert source("/srv/belt.avi") == "/srv/belt.avi"
    for kept in ["sim", "0", "'0'", "/dev/video0", "rtsp://10.0.0.5/stream1", "https://cam.local/mjpg",
                 "'v4l2src ! videoconvert ! appsink'"]:
        assert str(source(kept)) == kept.strip("'"), kept


def test_an_empty_broker_host_is_refused_not_taken_for_localhost() -> None:
    # "" used to connect to 127.0.0.1:1883 without starting anything; null is the demo broker.
    with pytest.raises(ConfigError, match=r"line.yaml:2: mqtt\.host:.*null"):
        parse("mqtt:\n  host: ''\n", "line.yaml")
    assert parse("mqtt:\n  host:\n").mqtt.host is None
