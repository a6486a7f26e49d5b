"""Run a bundle's int8 TFLite model on preprocessed crops with LiteRT.

`ai_edge_litert` is the runtime; `tflite_runtime` is accepted as a fallback for boxes
that only have it. TensorFlow is never imported here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.bundle import Bundle, BundleError
from edge.vision.partview import (
    Circle,
    InputSpec,
    combine_logits,
    combine_views,
    dihedral_views,
    part_only_input,
    sigmoid,
)

log = logging.getLogger(__name__)


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
        except ImportError as exc:  # pragma: no cover - depends on the box
            raise ImportError(
                "no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)"
            ) from exc
    return Interpreter


class Classifier:
    """One interpreter, batch 1: p_defect for a uint8 (H, W) grayscale crop.

    `spec` (the bundle's edge.vision.partview.InputSpec) says how the crop becomes the model's
    input: masked beyond the rim for a part-only bundle, and combined over `views`
    rotations/flips (their mean in logit space, or the highest). With neither, p_defect is the model's output exactly
    (`spec.output` p_defect), or its sigmoid (logit).
    """

    def __init__(self, model: bytes | str | Path, num_threads: int = 1, spec: InputSpec | None = None) -> None:
        self.spec = spec or InputSpec()
        Interpreter = _interpreter_class()
        try:
            if isinstance(model, bytes):
                self._it = Interpreter(model_content=model, num_threads=num_threads)
            else:
                self._it = Interpreter(model_path=str(model), num_threads=num_threads)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{model if not isinstance(model, bytes) else 'model'}: "
                              f"not a loadable TFLite model ({exc})") from exc
        inp = self._it.get_input_details()[0]
        out = self._it.get_output_details()[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        self.input_shape = tuple(int(v) for v in inp["shape"])
        self.input_dtype = np.dtype(inp["dtype"])
        self.input_scale, self.input_zero = (float(inp["quantization"][0]), int(inp["quantization"][1]))
        self.output_dtype = np.dtype(out["dtype"])
        self.output_scale, self.output_zero = (float(out["quantization"][0]), int(out["quantization"][1]))
        if len(self.input_shape) != 4 or self.input_shape[0] != 1 or self.input_shape[3] != 1:
            raise BundleError(f"model input shape {self.input_shape} is not (1, H, W, 1)")
        self._raw = self.input_dtype == np.uint8 and self.input_scale == 1.0 and self.input_zero == 0
        self._buf = np.zeros(self.input_shape, dtype=self.input_dtype)

    @classmethod
    def from_bundle(cls, bundle: Bundle, num_threads: int = 1) -> Classifier:
        try:
            spec = InputSpec.from_meta(bundle.meta)
        except ValueError as exc:
            raise BundleError(f"{bundle.path / 'model.json'}: {exc}") from exc
        clf = cls(bundle.model_path, num_threads=num_threads, spec=spec)
        expected = (1, *bundle.image_size, 1)
        if clf.input_shape != expected:
            raise BundleError(f"{bundle.model_path}: input shape {clf.input_shape} does not "
                              f"match image_size {list(bundle.image_size)} in model.json")
        problems = clf.quantization_mismatches(bundle.meta)
        if problems:
            raise BundleError(f"{bundle.model_path}: " + "; ".join(problems))
        return clf

    def quantization_mismatches(self, meta: dict[str, Any]) -> list[str]:
        """What the tflite file's input/output tensors say that model.json does not.

        A model exported with a float output (TFLite's default when only the input type is
        set) would otherwise be read as integers: every p_defect truncates to 0 and every
        part is accepted. So the file itself must be full-integer and agree with its sidecar.
        """
        problems = []
        for key, dtype, scale, zero in (("input", self.input_dtype, self.input_scale, self.input_zero),
                                        ("output", self.output_dtype, self.output_scale, self.output_zero)):
            if dtype not in (np.uint8, np.int8):
                problems.append(f"the model's {key} is {dtype.name}, but edge-inspect runs full-integer "
                                f"models only (uint8/int8 {key}; see docs/training.md, export)")
                continue
            q = meta[key]
            if (q["dtype"] != dtype.name or q["zero_point"] != zero
                    or not math.isclose(q["scale"], scale, rel_tol=1e-6)):
                problems.append(f"the model's {key} is {dtype.name} scale {scale:g} zero point {zero}, "
                                f"model.json says {q['dtype']} scale {q['scale']:g} zero point {q['zero_point']}")
        return problems

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input_shape[1], self.input_shape[2]

    def _quantize(self, gray: np.ndarray) -> np.ndarray:
        if self._raw:
            return gray
        x = np.rint(gray.astype(np.float32) / self.input_scale + self.input_zero)
        info = np.iinfo(self.input_dtype)
        return np.clip(x, info.min, info.max).astype(self.input_dtype)

    def raw_output(self, gray: np.ndarray) -> int:
        """The quantized output value: p_defect = scale * (q - zero_point)."""
        if gray.shape != self.image_size or gray.dtype != np.uint8:
            raise ValueError(f"expected uint8 {self.image_size} input, got {gray.dtype} {gray.shape}")
        self._buf[0, :, :, 0] = self._quantize(gray)
        self._it.set_tensor(self._in_index, self._buf)
        self._it.invoke()
        return int(self._it.get_tensor(self._out_index).reshape(-1)[0])

    def _dequantized(self, model_input: np.ndarray) -> float:
        if self.output_dtype not in (np.uint8, np.int8):
            raise BundleError(f"the model's output is {self.output_dtype.name}, not a quantized {self.spec.output}")
        return float(self.output_scale * (self.raw_output(model_input) - self.output_zero))

    def model_p(self, model_input: np.ndarray) -> float:
        """The model's own p_defect for one prepared input (no mask, no views)."""
        v = self._dequantized(model_input)
        return sigmoid(v) if self.spec.output == "logit" else v

    def p_defect(self, gray: np.ndarray, circle: Circle | None = None) -> float:
        """p_defect of a crop under the bundle's input spec; `circle`: its rim, where already found."""
        x = part_only_input(gray, self.spec, circle)
        if self.spec.views == 1:
            return self.model_p(x)
        views = dihedral_views(x, self.spec.views)
        if self.spec.output == "logit":
            return combine_logits([self._dequantized(v) for v in views], self.spec.aggregate)
        return combine_views([self.model_p(v) for v in views], self.spec.aggregate)

    def predict(self, images: np.ndarray, circles: list[Circle] | None = None) -> np.ndarray:
        """p_defect for each uint8 (N, H, W) crop (rims found here unless given)."""
        if circles is None:
            return np.array([self.p_defect(img) for img in images], dtype=np.float64)
        return np.array([self.p_defect(img, c) for img, c in zip(images, circles, strict=True)], dtype=np.float64)


def decide(p_defect: float, threshold: float) -> str:
    """The bundle's contract: p_defect >= threshold means reject."""
    return "reject" if p_defect >= threshold else "accept"
