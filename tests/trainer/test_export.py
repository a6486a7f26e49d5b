"""The int8 export: what its output holds, as the edge runtime reads it (real TFLite, real LiteRT)."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from edge.inference.model import Classifier  # noqa: E402
from edge.vision.partview import InputSpec, dihedral_views, mean_logit  # noqa: E402
from trainer.export import LOGIT_CLIP, ExportError, logit_model, to_int8_tflite  # noqa: E402
from trainer.models import edge_cnn  # noqa: E402

SIZE = (64, 64)


@pytest.fixture(scope="module")
def low_scoring() -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """An untrained network whose scores sit where a cost:20 threshold does (p about 0.001-0.02),
    with images that spread them."""
    keras.utils.set_random_seed(3)
    model = edge_cnn(SIZE)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:SIZE[0], :SIZE[1]]
    images = []
    for _ in range(48):  # blobs of every brightness and size on noise: the features differ
        cx, cy, r = rng.uniform(15, 49, 2).tolist() + [rng.uniform(4, 20)]
        img = rng.normal(rng.uniform(60, 190), rng.uniform(2, 30), SIZE)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] += rng.uniform(-80, 80)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    images = np.stack(images)
    head = model.get_layer("p_defect")
    w, _ = head.get_weights()
    z = logit_model(model).predict(images[..., None].astype(np.float32), verbose=0).ravel()
    scale = 1.5 / max(float(z.std()), 1e-6)  # logits spread by 1.5 around -5.5 (p 0.004)
    head.set_weights([w * scale, np.array([-5.5 - float(z.mean()) * scale], np.float32)])
    return model, images[:24], images[24:]


def test_a_logit_output_keeps_the_float_ranking_where_a_probability_output_ties(low_scoring) -> None:
    model, calibration, images = low_scoring
    float_p = model.predict(images[..., None].astype(np.float32), verbose=0).ravel().astype(np.float64)
    assert 0.0005 < np.median(float_p) < 0.02
    as_p = Classifier(to_int8_tflite(model, calibration))
    as_logit = Classifier(to_int8_tflite(model, calibration, "logit"), spec=InputSpec(output="logit"))
    assert as_p.output_scale == pytest.approx(1 / 256) and as_logit.output_scale <= 2 * LOGIT_CLIP / 255 + 1e-6
    p_uint8 = as_p.predict(images)
    p_logit = as_logit.predict(images)
    low = float_p < 4 / 256  # below the shipped bundles' uint8 threshold: where the pinholes score
    assert low.sum() >= 10 and len(np.unique(p_uint8[low])) <= 3  # 0, 1/256 or 2/256 for all of them
    assert len(np.unique(p_logit[low])) >= 0.8 * low.sum()
    z_float, z_int8 = (np.log(p / (1 - p)) for p in (float_p, p_logit))
    assert np.abs(z_int8 - z_float).max() < 0.5  # a few int8 steps of log-odds
    rank = np.corrcoef(np.argsort(np.argsort(float_p)), np.argsort(np.argsort(p_logit)))[0, 1]
    rank_uint8 = np.corrcoef(np.argsort(np.argsort(float_p)), np.argsort(np.argsort(p_uint8)))[0, 1]
    assert rank > 0.95 and rank > rank_uint8


def test_a_logit_models_views_are_averaged_as_logits_without_the_probability_floor(low_scoring) -> None:
    model, calibration, images = low_scoring
    spec = InputSpec(output="logit", views=4)
    clf = Classifier(to_int8_tflite(model, calibration, "logit"), spec=spec)
    one = Classifier(to_int8_tflite(model, calibration, "logit"), spec=InputSpec(output="logit"))
    for img in images[:4]:
        z = [np.log(p / (1 - p)) for p in (one.p_defect(v) for v in dihedral_views(img, 4))]
        assert clf.p_defect(img) == pytest.approx(1 / (1 + np.exp(-np.mean(z))), rel=1e-9)
    # a part every view scores far below 1/512 stays there (a probability output floors it at 1/512)
    sure = keras.models.clone_model(model)
    sure.set_weights(model.get_weights())
    w, _ = sure.get_layer("p_defect").get_weights()
    sure.get_layer("p_defect").set_weights([w * 0, np.array([-9.0], np.float32)])
    low = Classifier(to_int8_tflite(sure, calibration, "logit"), spec=spec).p_defect(images[0])
    assert low == pytest.approx(1 / (1 + np.exp(9.0)), rel=0.1) and low < mean_logit([0.0] * 4) / 10


def test_logit_export_refuses_a_model_without_the_output_layer_and_an_unknown_output() -> None:
    inp = keras.Input((*SIZE, 1))
    other = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="score")(keras.layers.Flatten()(inp)))
    images = np.zeros((2, *SIZE), np.uint8)
    with pytest.raises(ExportError, match="'p_defect' layer"):
        to_int8_tflite(other, images, "logit")
    with pytest.raises(ExportError, match="'probability'"):
        to_int8_tflite(other, images, "probability")
