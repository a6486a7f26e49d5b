"""How each `edge-train adapt` threshold rule would have done on the held-out images of adapted runs.

    .venv/bin/python bench/adapt_threshold_rules.py RUN [RUN ...] [--rules keep-old-line,margin:1,...]

For the threshold rule study (docs/commissioning.md): a rule only sets the threshold, so one adapt
run serves every rule. Each rule's threshold is computed by trainer.threshold.adapted_threshold from
what the run recorded in model.json (out-of-fold new-line scores, the adapted int8 model's scores on
the original validation, the base's bar there); the held-out new-line images are scored once by the
adapted bundle as written. Prints, per run and rule: threshold, held-out escapes, good rejected and
accuracy against the base's, and the original validation's figures. A consistency check: the
run's own rule must reproduce the held-out figures its report.md gives.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge, reject_scores
from edge.offline.dataset import list_labelled, load_samples
from edge.offline.metrics import summarize
from edge.vision.partview import output_of
from trainer.threshold import adapted_threshold, parse_policy, parse_rule

DEFAULT_RULES = "keep-old-line,margin:0.5,margin:1,margin:1.5,margin:2,margin:3"


def _arrays(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of a score_record (each class's scores, sorted)."""
    d, ok = record["defect"], record["ok"]
    return np.r_[np.ones(len(d), int), np.zeros(len(ok), int)], np.asarray(d + ok, np.float64)


def _row(name: str, s: dict) -> str:
    return f"{name:<16} {100 * s['accuracy']:7.2f}% {s['false_accepts']:4d} acc {s['false_rejects']:4d} rej"


def study(run: Path, rules: list[str]) -> list[dict]:
    b = bundle_fmt.load(run)
    rec = b.meta["training"]["adapted"]
    tf = rec["threshold_from"]
    root = Path(rec["new_line"]["root"])
    held = set(rec["new_line"]["held_out"])
    samples = [s for s in list_labelled(root) if str(s.path.relative_to(root)) in held]
    loaded = load_samples(samples)
    held_scores = reject_scores(Judge.from_bundle(b).judge_all(loaded.images))
    new_y, new_p = _arrays(tf["scores"]["out_of_fold_new_line"])
    old_y, old_p = _arrays(tf["scores"]["original_validation_int8"])
    bar = (tf["old_line_bar"]["escapes"], tf["old_line_bar"]["errors"])
    policy = parse_policy(tf["policy"])
    figures = json.loads((run / "metrics.json").read_text())["figures"]
    own = summarize(loaded.labels, held_scores, b.threshold)
    keys = ("accuracy", "false_accepts", "false_rejects")
    if any(own[k] != figures["adapted"]["held_out"][k] for k in keys):
        raise SystemExit(f"{run}: held-out figures differ from its report: "
                         f"{[own[k] for k in keys]} vs {[figures['adapted']['held_out'][k] for k in keys]}")
    print(f"\n{run} (rule {tf['rule']}, {len(loaded.labels)} held out, {int(loaded.labels.sum())} defects)")
    print(_row("base", figures["base"]["held_out"]) + " | orig val " + _row("", figures["base"]["original_validation"]))
    out = []
    for rule in rules:
        t = adapted_threshold(rule, new_y, new_p, old_y, old_p, bar, policy, output_of(b.meta))
        h, v = summarize(loaded.labels, held_scores, t.threshold), summarize(old_y, old_p, t.threshold)
        print(_row(rule, h) + f" | orig val {_row('', v)} | t {t.threshold:.4g} (kept {t.kept})")
        out.append({"run": str(run), "rule": rule, "threshold": t.threshold, "held_out": h, "original_validation": v,
                    "base_held_out": figures["base"]["held_out"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--rules", default=DEFAULT_RULES)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rules = args.rules.split(",")
    for r in rules:
        parse_rule(r)
    rows = [row for run in args.runs for row in study(run, rules)]
    print("\nrule             held-out escapes (all runs)  good rejected  runs not better than base")
    for rule in rules:
        mine = [r for r in rows if r["rule"] == rule]
        worse = sum(r["held_out"]["accuracy"] <= r["base_held_out"]["accuracy"] for r in mine)
        print(f"{rule:<16} {sum(r['held_out']['false_accepts'] for r in mine):27d}  "
              f"{sum(r['held_out']['false_rejects'] for r in mine):13d}  {worse}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
