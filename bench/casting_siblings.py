"""Which dataset images are copies of the same casting: the hard fit examples against validation,
or every image of the dataset grouped by casting.

    .venv/bin/python bench/casting_siblings.py RUN [--data DIR] [--against validation|test] [--min 0.8]
    .venv/bin/python bench/casting_siblings.py --groups [--data DIR] [--min 0.8] [--bundle BUNDLE]

`casting_data` was augmented (turned, flipped, relit) from fewer originals before its split, so one
casting can sit in fit, validation and test at once (../shared/datasets/README.md). This finds
them by the flange's own grain: each image's flange band (0.62-0.95 of the rim radius, the rim
found as training finds it) unwrapped to polar coordinates and high-passed, then every pair
correlated over every turn, flipped and not (a turn is a shift along the angle). Copies of one
casting score 0.8-0.9, different castings 0.3-0.6. RUN is a run folder whose
`checkpoints/hard_examples.json` (trainer.hard) names the fit defects; printed: their pairwise
scores and, per image of the chosen split's defects, its best-matching mined one where that
reaches --min. `--groups`: every image of train/ and test/, per class, joined to each copy it
scores --min or more with (candidates: the 10 nearest by the turn- and flip-free magnitude of the
signature's angular spectrum, then the full score), and how many validation images (the fit's
split, seed 123) have a copy among the fit images and test images among train/. Read-only; 1-2
min, --groups about 3.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge, reject_scores
from edge.offline.dataset import default_data_root, list_labelled, load_samples, stratified_split
from edge.vision.partview import rim_circle

BAND = (0.62, 0.95)  # of the rim radius: the flange, where the pinholes are
ANGLES, RADII = 720, 40
VAL_FRACTION, SPLIT_SEED = 0.2, 123  # edge-train fit's defaults: the shipped bundle's split


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


def copies(sigs: np.ndarray, at_least: float, candidates: int = 10) -> list[set[int]]:
    """Per image, the others it scores `at_least` with among its nearest candidates."""
    spectrum = np.log1p(np.abs(np.fft.rfft(sigs, axis=1))[:, 1:121]).reshape(len(sigs), -1)
    spectrum -= spectrum.mean(axis=0)
    spectrum /= np.linalg.norm(spectrum, axis=1, keepdims=True)
    near = spectrum @ spectrum.T
    np.fill_diagonal(near, -np.inf)
    out: list[set[int]] = [set() for _ in sigs]
    for i, row in enumerate(np.argsort(-near, axis=1)[:, :candidates]):
        for j in row:
            if same_casting(sigs[i], sigs[j]) >= at_least:
                out[i].add(int(j))
                out[int(j)].add(i)
    return out


def groups(data: Path, at_least: float, bundle_path: Path | None) -> None:
    train, test = list_labelled(data / "train"), list_labelled(data / "test")
    loaded = load_samples(train)
    fit_idx, val_idx = stratified_split(loaded.labels, VAL_FRACTION, SPLIT_SEED)
    split = np.empty(len(loaded.labels), object)
    split[fit_idx], split[val_idx] = "fit", "validation"
    tested = load_samples(test)
    unseen: list[int] = []  # test images with no copy in train/
    for label, cls in enumerate(("ok_front", "def_front")):
        rows = [(img, s) for img, s, y in zip(loaded.images, split, loaded.labels) if y == label]
        rows += [(img, "test") for img, y in zip(tested.images, tested.labels) if y == label]
        where = np.array([s for _, s in rows])
        linked = copies(np.stack([signature(img) for img, _ in rows]), at_least)
        seen, castings = np.zeros(len(rows), bool), 0
        for i in range(len(rows)):  # connected components: one casting's copies
            if not seen[i]:
                castings, stack = castings + 1, [i]
                seen[i] = True
                while stack:
                    for j in linked[stack.pop()]:
                        if not seen[j]:
                            seen[j] = True
                            stack.append(j)

        def share(of: str, among: tuple[str, ...]) -> str:
            mine = np.flatnonzero(where == of)
            hit = sum(any(where[j] in among for j in linked[i]) for i in mine)
            return f"{hit} of {len(mine)} ({100 * hit / max(len(mine), 1):.1f}%)"

        print(f"{cls}: {len(rows)} images, about {castings} castings at a score of {at_least} or more; "
              f"validation with a copy among fit: {share('validation', ('fit',))}; test with a copy in "
              f"train/: {share('test', ('fit', 'validation'))}")
        first_test = int(np.flatnonzero(where == "test")[0])
        in_class = np.flatnonzero(tested.labels == label)
        unseen += [int(in_class[i - first_test]) for i in np.flatnonzero(where == "test")
                   if not any(where[j] != "test" for j in linked[i])]
    if bundle_path is not None:  # a report on test, after every choice: never a reason to choose
        b = bundle_fmt.load(bundle_path)
        scores = reject_scores(Judge.from_bundle(b).judge_all(tested.images[unseen]))
        y = tested.labels[unseen]
        print(f"{bundle_path} ({b.short_id}) at its threshold on the {len(unseen)} test images with no copy in "
              f"train/: {int((y == 1).sum())} defects, {int(((y == 1) & (scores < b.threshold)).sum())} accepted; "
              f"{int((y == 0).sum())} good, {int(((y == 0) & (scores >= b.threshold)).sum())} rejected")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--groups", action="store_true")
    ap.add_argument("--bundle", type=Path, default=None, help="with --groups: judge the test images no train/ "
                    "image is a copy of with this bundle (a report on test, never a reason to choose)")
    ap.add_argument("--data", type=Path, default=default_data_root())
    ap.add_argument("--against", choices=("validation", "test"), default="validation")
    ap.add_argument("--min", type=float, default=0.8)
    args = ap.parse_args()
    if args.groups:
        groups(args.data, args.min, args.bundle)
        return
    if args.run is None:
        ap.error("name a RUN folder, or pass --groups")
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
        _, val_idx = stratified_split(loaded.labels, VAL_FRACTION, SPLIT_SEED)
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
