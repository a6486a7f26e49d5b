"""Reframing a second camera's images as the daemon frames a part (docs/commissioning.md,
"Reframing study").

    .venv/bin/python bench/reframe.py [FOLDER ...]   (default: casting_512_dark, then the test split)

Each image resized whole to 300 (as issue 17 measures a folder), and the same image re-cropped
around its rim: found by the shipped bundle's finder on the resized crop, mapped to the original's
pixels, framed by `edge.vision.locate.crop_part` (rim centred, 0.81 of the side). No label is read
for the framing. The shipped bundle judges both at its own threshold.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge, reject_scores
from edge.offline.dataset import default_data_root, list_labelled, load_samples
from edge.offline.metrics import summarize
from edge.vision.locate import PartBox, crop_part
from edge.vision.preprocess import decode_bytes, to_gray_u8


def reframed(judge: Judge, path: Path, resized: np.ndarray) -> tuple[np.ndarray, bool]:
    """The image framed around its rim, or the resized image where no rim is found (False)."""
    rim = judge.rim(resized)
    if not rim.found:
        return resized, False
    original = to_gray_u8(decode_bytes(path.read_bytes()))
    h, w = original.shape
    side = max(h, w)  # to_model_input pads to a square before resizing; the dataset's images are square
    f = side / resized.shape[0]
    box = PartBox((rim.cx + 0.5) * f - 0.5 - (side - w) / 2, (rim.cy + 0.5) * f - 0.5 - (side - h) / 2,
                  rim.r * f, rim.score, True)
    return crop_part(original, box), True


def main() -> None:
    t0 = time.perf_counter()
    shipped = bundle_fmt.load(Path("models/casting-cnn"))
    judge = Judge.from_bundle(shipped)
    root = default_data_root()
    folders = [Path(a) for a in sys.argv[1:]] or [root.parent / "casting_512_dark", root / "test"]
    print(f"shipped bundle {shipped.short_id}, threshold {shipped.threshold:.6g}")
    for folder in folders:
        data = load_samples(list_labelled(folder))
        framed = [reframed(judge, p, img) for p, img in zip(data.paths, data.images, strict=True)]
        print(f"{folder} ({len(data.labels)} images, {sum(ok for _, ok in framed)} reframed around their rim)")
        for name, images in (("resized whole", data.images), ("reframed", np.stack([x for x, _ in framed]))):
            r = summarize(data.labels, reject_scores(judge.judge_all(images)), shipped.threshold)
            print(f"    {name}: accuracy {100 * r['accuracy']:.2f}%, defects accepted {r['false_accepts']}, "
                  f"good rejected {r['false_rejects']}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
