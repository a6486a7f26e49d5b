import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from edge.inference import bundle
from edge.inference.bundle import BundleError


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


def test_damaged_image_stats_are_refused_at_load(tmp_path: Path) -> None:
    # The drift watch reads these baselines at start and on reload; a damaged one used
    # to pass load() and then crash the daemon (KeyError) after the swap.
    stats = {"brightness": {"mean": 143.9, "std": 8.0}, "sharpness": {"mean": 13.2, "std": 2.6}}
    bundle.write(tmp_path / "good", b"tflite", meta(image_stats=stats))
    assert bundle.load(tmp_path / "good").meta["image_stats"] == stats
    for bad, named in (({"sharpness": {"mean": 13.22}}, "image_stats.sharpness"),
                       ({"contrast": {"mean": "60", "std": 3.0}}, "image_stats.contrast"),
                       ({"brightness": {"mean": 140.0, "std": -1.0}}, "image_stats.brightness"),
                       ({"fit_mean": None}, "image_stats.fit_mean"),
                       ([1, 2], "'image_stats' must be an object")):
        folder = tmp_path / "bad"
        bundle.write(folder, b"tflite", meta())
        sidecar = folder / bundle.SIDECAR_FILE
        sidecar.write_text(json.dumps(dict(json.loads(sidecar.read_text()), image_stats=bad)))
        with pytest.raises(BundleError, match=re.escape(named)):
            bundle.load(folder)


def _copy_shipped(dest: Path, model: bytes | None = None, **sidecar: object) -> Path:
    """The shipped bundle with other model bytes and sidecar fields, re-sealed (as a buggy exporter would)."""
    shutil.copytree(bundle.DEFAULT_BUNDLE, dest, ignore=shutil.ignore_patterns("figures", "checkpoints"))
    if model is not None:
        (dest / bundle.MODEL_FILE).write_bytes(model)
    path = dest / bundle.SIDECAR_FILE
    bundle.write_sidecar(dest, dict(json.loads(path.read_text()), **sidecar))
    return dest


@pytest.mark.parametrize("field, value", [("threshold", 0.5), ("views", 8), ("guard", None), ("view_aggregate", "max"),
                                          ("input", {"dtype": "uint8", "scale": 1.0, "zero_point": 0})])
def test_a_deciding_field_edited_by_hand_is_refused_with_the_way_out(tmp_path: Path, field: str,
                                                                      value: object) -> None:
    """A threshold typed into model.json would skip the validation check a config override gets."""
    dest = tmp_path / "b"
    shutil.copytree(bundle.DEFAULT_BUNDLE, dest, ignore=shutil.ignore_patterns("figures", "checkpoints"))
    path = dest / bundle.SIDECAR_FILE
    original = json.loads(path.read_text())
    assert bundle.load(dest).meta == original  # the shipped bundle is sealed and loads
    path.write_text(json.dumps(dict(original, **{field: value})))
    with pytest.raises(BundleError) as e:
        bundle.load(dest)
    msg = str(e.value)
    assert str(path) in msg and "decision_digest" in msg and "model.threshold" in msg, msg
    if field == "threshold":
        assert "threshold 0.5" in msg, msg
    # a field no decision depends on may be annotated freely
    path.write_text(json.dumps(dict(original, notes="checked by QA 2026-12-07")))
    assert bundle.load(dest).meta["notes"] == "checked by QA 2026-12-07"


def test_an_unsealed_bundle_loads_with_a_warning_and_write_sidecar_seals_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    b = bundle.write(tmp_path, b"fake model bytes", meta())
    assert b.meta[bundle.SEAL_KEY] == bundle.decision_digest(b.meta)
    unsealed = {k: v for k, v in b.meta.items() if k != bundle.SEAL_KEY}
    (tmp_path / bundle.SIDECAR_FILE).write_text(json.dumps(dict(unsealed, threshold=0.3)))
    with caplog.at_level("WARNING", logger="edge.inference.bundle"):
        assert bundle.load(tmp_path).threshold == 0.3
    assert any("no decision seal" in r.getMessage() for r in caplog.records)
    sealed = bundle.write_sidecar(tmp_path, dict(unsealed, threshold=0.3))
    assert sealed.meta[bundle.SEAL_KEY] == bundle.decision_digest(sealed.meta) != b.meta[bundle.SEAL_KEY]
    assert json.loads((tmp_path / bundle.SIDECAR_FILE).read_text()) == sealed.meta


def test_a_sidecar_that_misstates_the_models_quantization_is_refused(tmp_path: Path) -> None:
    from edge.inference.model import Classifier

    shipped = bundle.load(bundle.DEFAULT_BUNDLE)
    Classifier.from_bundle(shipped)  # the shipped pair agrees
    out = shipped.meta["output"]
    wrong = dict(out, scale=0.5)
    b = bundle.load(_copy_shipped(tmp_path / "b", output=wrong))  # sha256 covers the tflite file only
    with pytest.raises(BundleError, match=re.escape(f"output is uint8 scale {out['scale']:g} zero point "
                                                    f"{out['zero_point']}, model.json says uint8 scale 0.5")):
        Classifier.from_bundle(b)


def test_a_model_with_a_float_output_is_refused_not_read_as_zero(tmp_path: Path) -> None:
    # TFLite keeps a float output unless inference_output_type is set; read as an integer
    # every p_defect truncated to 0 and every part was accepted.
    tf = pytest.importorskip("tensorflow")
    import hashlib

    import keras
    import numpy as np

    from edge.inference.model import Classifier

    inp = keras.Input((300, 300, 1))
    x = keras.layers.Conv2D(2, 3, strides=8, activation="relu")(keras.layers.Rescaling(1 / 255)(inp))
    x = keras.layers.GlobalAveragePooling2D()(x)
    # A zero kernel: p = sigmoid(1) = 0.73 whatever the random conv weights (an unseeded
    # kernel made the control below fail about one run in three).
    net = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros",
                                              bias_initializer="ones")(x))

    def representative():  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(0)
        for _ in range(4):
            yield [rng.integers(0, 256, (1, 300, 300, 1)).astype(np.float32)]

    def export(output_type: object) -> Path:
        conv = tf.lite.TFLiteConverter.from_keras_model(net)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        if output_type is not None:
            conv.inference_output_type = output_type
        data = bytes(conv.convert())
        # this net outputs p itself (a sigmoid's uint8 quantization), whatever the shipped bundle does
        return _copy_shipped(tmp_path / str(output_type), data, sha256=hashlib.sha256(data).hexdigest(),
                             output={"dtype": "uint8", "scale": 1 / 256, "zero_point": 0})

    quantized = Classifier.from_bundle(bundle.load(export(tf.uint8)))
    assert quantized.p_defect(np.full((300, 300), 128, np.uint8)) > 0.5  # the control: a real score
    with pytest.raises(BundleError, match="output is float32, but edge-inspect runs full-integer models only"):
        Classifier.from_bundle(bundle.load(export(None)))


def test_a_non_finite_number_is_never_written_into_model_json(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="non-finite"):
        bundle.write(tmp_path / "b", b"tflite", meta(metrics={"auc": float("nan")}))
    assert not (tmp_path / "b").exists()


def test_an_optional_deciding_field_is_sealed_where_present_and_older_seals_stay_valid(tmp_path: Path) -> None:
    b = bundle.write(tmp_path, b"fake model bytes", meta())
    assert "view_aggregate" not in b.meta
    # the seal of a bundle without the field is what it was before the field existed
    old_doc = {k: b.meta.get(k) for k in bundle.DECIDING_FIELDS}
    old = hashlib.sha256(json.dumps(old_doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert b.meta[bundle.SEAL_KEY] == old
    sealed = bundle.write_sidecar(tmp_path, dict(b.meta, view_aggregate="max"))
    assert sealed.meta[bundle.SEAL_KEY] != old and bundle.load(tmp_path).meta["view_aggregate"] == "max"
    path = tmp_path / bundle.SIDECAR_FILE
    path.write_text(json.dumps({k: v for k, v in sealed.meta.items() if k != "view_aggregate"}))
    with pytest.raises(BundleError, match="decision_digest"):  # removing it by hand changes the decision
        bundle.load(tmp_path)
