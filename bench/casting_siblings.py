"""Which dataset images are copies of the same casting: the hard fit examples against validation.

    .venv/bin/python bench/casting_siblings.py RUN [--data DIR] [--against validation|test] [--min 0.8]

`casting_data` was augmented (turned, flipped, relit) from fewer originals before its split, so one
casting can sit in fit, validation and test at once (../shared/datasets/README.md). This finds
them by the flange's own grain: each image's flange band (0.62-0.95 of the rim radius, the rim
found as training finds it) unwrapped to polar coordinates and high-passed, then every pair
correlated over every turn, flipped and not (a turn is a shift along the angle). Copies of one
casting score 0.8-0.9, different castings 0.3-0.6. RUN is a run folder whose
`checkpoints/hard_examples.json` (trainer.hard) names the fit defects; printed: their pairwise
scores and, per image of the chosen split's defects, its best-matching mined one where that
reaches --min. Read-only; 1-2 min.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from edge.offline.dataset import default_data_root, list_labelled, load_samples, stratified_split
from edge.vision.partview import rim_circle

BAND = (0.62, 0.95)  # of the rim radius: the flange, where the pinholes are
ANGLES, RADII = 720, 40


def signature(gray: np.ndarray) -> np.ndarray:
    """(ANGLES, RADII) float: the flange's high-passed grain in polar pixels, zero mean, unit spread."""
    c = rim_circle(gray, "combined")
    polar = cv2.warpPolar(gray.astype(np.float32), (int(c.r), ANGLES), (c.cx, c.cy), c.r, cv2.WARP_POLAR_LINEAR)
    band = cv2.resize(polar[:, int(BAND[0] * c.r):int(BAND[1] * c.r)], (RADII, ANGLES))
    hp = band - cv2.GaussianBlur(band, (0, 0), 3)
    return (hp - hp.mean()) / (hp.std() + 1e-6)


def same_casting(a: np.ndarray, b: np.ndarray) -> float:
    """The best correlation of two signatures over every turn, with and without a mirror flip."""
    fa = np.fft.fft(a, axis=0)
    best = 0.0
    for other in (b, b[::-1]):
        cc = np.real(np.fft.ifft((fa * np.conj(np.fft.fft(other, axis=0))).sum(axis=1))) / a.size
        best = max(best, float(cc.max()))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, default=default_data_root())
    ap.add_argument("--against", choices=("validation", "test"), default="validation")
    ap.add_argument("--min", type=float, default=0.8)
    args = ap.parse_args()
    rec = json.loads((args.run / "checkpoints" / "hard_examples.json").read_text())
    mined = [e["image"] for e in rec["defects"]]
    sigs = [signature(cv2.imread(str(args.data / "train" / m), cv2.IMREAD_GRAYSCALE)) for m in mined]
    short = [Path(m).stem.rsplit("_", 1)[-1] for m in mined]
    print(f"{len(mined)} mined fit defects (the init bundle's p below {rec['hard_defect_p']}), pairwise:")
    print("      " + " ".join(f"{s:>5}" for s in short))
    for s, a in zip(short, sigs):
        print(f"{s:>5} " + " ".join(f"{same_casting(a, b):5.2f}" for b in sigs))
    if args.against == "validation":
        samples = list_labelled(args.data / "train")
        loaded = load_samples(samples)
        _, val_idx = stratified_split(loaded.labels, 0.2, 123)
        pool = [(loaded.paths[i], loaded.images[i]) for i in val_idx if loaded.labels[i] == 1]
    else:
        loaded = load_samples([s for s in list_labelled(args.data / "test") if s.label == 1])
        pool = list(zip(loaded.paths, loaded.images))
    hits = []
    for path, img in pool:
        scores = [same_casting(signature(img), b) for b in sigs]
        if max(scores) >= args.min:
            hits.append(f"{path.name} ~ {short[int(np.argmax(scores))]} ({max(scores):.2f})")
    print(f"{args.against} defects ({len(pool)}) scoring {args.min} or more with a mined one: {len(hits)}")
    for h in hits:
        print("  " + h)


if __name__ == "__main__":
    main()
