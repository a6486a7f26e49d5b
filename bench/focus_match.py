"""Label-free focus matching for a second camera (docs/commissioning.md, "Focus matching study").

    .venv/bin/python bench/focus_match.py [FOLDER ...]   (default: casting_512_dark, then the test split)

For each labelled folder: the Gaussian blur (sigma 0 to 1.6 px on the 300 x 300 crop) whose
crops' median Laplacian variance inside the rim is nearest that of the shipped bundle's fit
images, chosen without the labels; then the shipped bundle judges the folder unblurred and
blurred at that sigma, at its own threshold.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge, reject_scores
from edge.offline.dataset import default_data_root, list_labelled, load_samples, stratified_split
from edge.offline.metrics import summarize
from edge.vision.partview import Circle
from trainer.compare import split_of

SIGMAS = tuple(round(0.2 * k, 1) for k in range(9))  # 0, 0.2, ..., 1.6 px


def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return images
    return np.stack([cv2.GaussianBlur(img, (0, 0), sigma) for img in images])


def crispness(img: np.ndarray, rim: Circle) -> float:
    """Variance of the Laplacian inside the rim (radius x 0.95): the part's own detail, not the belt's."""
    yy, xx = np.mgrid[:img.shape[0], :img.shape[1]]
    inside = (xx - rim.cx) ** 2 + (yy - rim.cy) ** 2 <= (0.95 * rim.r) ** 2
    return float(cv2.Laplacian(img.astype(np.float32), cv2.CV_32F)[inside].var())


def median_crispness(judge: Judge, images: np.ndarray) -> float:
    return float(np.median([crispness(img, judge.rim(img)) for img in images]))


def main() -> None:
    t0 = time.perf_counter()
    shipped = bundle_fmt.load(Path("models/casting-cnn"))
    judge = Judge.from_bundle(shipped)
    root = default_data_root()
    train = load_samples(list_labelled(root / "train"))
    seed, fraction, _ = split_of(shipped.meta)
    fit_idx, _ = stratified_split(train.labels, fraction, seed)
    target = median_crispness(judge, train.images[fit_idx])
    print(f"shipped bundle {shipped.short_id}, threshold {shipped.threshold:.6g}; fit images {len(fit_idx)}, "
          f"median crispness inside the rim {target:.1f}")
    folders = [Path(a) for a in sys.argv[1:]] or [root.parent / "casting_512_dark", root / "test"]
    for folder in folders:
        data = load_samples(list_labelled(folder))
        by_sigma = {s: median_crispness(judge, blurred(data.images, s)) for s in SIGMAS}  # no label read here
        sigma = min(SIGMAS, key=lambda s: abs(by_sigma[s] - target))
        print(f"{folder} ({len(data.labels)} images): median crispness by sigma "
              + ", ".join(f"{s:g}: {v:.0f}" for s, v in by_sigma.items()) + f"; chosen sigma {sigma:g}")
        for s in sorted({0.0, sigma}):
            r = summarize(data.labels, reject_scores(judge.judge_all(blurred(data.images, s))), shipped.threshold)
            print(f"    sigma {s:g}: accuracy {100 * r['accuracy']:.2f}%, defects accepted {r['false_accepts']}, "
                  f"good rejected {r['false_rejects']}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
