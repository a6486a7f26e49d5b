import json
from pathlib import Path

import pytest

from edge import bundle
from edge.bundle import BundleError


def meta(**over: object) -> dict:
    m = {
        "image_size": [300, 300], "color": "grayscale", "class_names": ["ok_front", "def_front"],
        "positive_class": "def_front", "threshold": 0.4, "architecture": "edge",
        "input": {"dtype": "uint8", "scale": 1.0, "zero_point": 0},
        "output": {"dtype": "uint8", "scale": 1 / 256, "zero_point": 0},
        "training": {"command": "edge-train fit"}, "metrics": {},
    }
    m.update(over)
    return m


def test_write_then_load_round_trips_and_records_sha(tmp_path: Path) -> None:
    b = bundle.write(tmp_path, b"fake model bytes", meta())
    loaded = bundle.load(tmp_path)
    assert loaded.meta == b.meta
    assert loaded.sha256 == bundle.sha256_file(tmp_path / "model.tflite")
    assert loaded.threshold == 0.4 and loaded.image_size == (300, 300)
    assert bundle.load(tmp_path / "model.json").path == tmp_path


def test_modified_model_file_is_refused(tmp_path: Path) -> None:
    bundle.write(tmp_path, b"fake model bytes", meta())
    (tmp_path / "model.tflite").write_bytes(b"other bytes")
    with pytest.raises(BundleError, match="does not match .* changed or corrupted"):
        bundle.load(tmp_path)


def test_every_field_problem_is_named(tmp_path: Path) -> None:
    b = bundle.write(tmp_path, b"x", meta())
    bad = dict(b.meta, threshold=1.5, color="rgb", positive_class="scratch", image_size=[300])
    del bad["architecture"]
    (tmp_path / "model.json").write_text(json.dumps(bad))
    with pytest.raises(BundleError) as e:
        bundle.load(tmp_path)
    assert "missing field 'architecture'" in str(e.value)
    bad["architecture"] = "edge"
    (tmp_path / "model.json").write_text(json.dumps(bad))
    with pytest.raises(BundleError) as e:
        bundle.load(tmp_path)
    for words in ("'threshold' must be in (0, 1]", "'color' must be 'grayscale'", "'positive_class' 'scratch'",
                  "'image_size' must be [height, width]"):
        assert words in str(e.value)


def test_unreadable_sidecars_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle folder not found"):
        bundle.load(tmp_path / "nope")
    bundle.write(tmp_path, b"x", meta())
    (tmp_path / "model.json").write_text('{"format_version": 1,\n oops}')
    with pytest.raises(BundleError, match="not valid JSON \\(line 2"):
        bundle.load(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(dict(meta(), format_version=99, sha256="0" * 64)))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        bundle.load(tmp_path)
    (tmp_path / "model.tflite").unlink()
    with pytest.raises(BundleError, match="model.tflite: missing"):
        bundle.load(tmp_path)
