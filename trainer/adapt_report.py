"""The report of `edge-train adapt` (trainer.adapt): base and adapted side by side, the checks a
promotion needs, and the held-out defects either bundle let through. Pure: figures in, text out."""

from __future__ import annotations

from typing import Any

import numpy as np


def promotion_checks(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """What a promotion needs (issue 20), each met or not with its figures: a candidate that wins on the
    new line by costing the old line parts, or lets a held-out defect through, is not ready."""
    def errors(s: dict[str, Any]) -> int:
        return int(s["false_accepts"]) + int(s["false_rejects"])

    (bh, ah), (bv, av) = ((figures["base"][k], figures["adapted"][k]) for k in ("held_out", "original_validation"))
    return [
        {"check": "fewer held-out new-line parts wrong than the base", "met": errors(ah) < errors(bh),
         "figures": f"{errors(ah)} wrong ({100 * ah['accuracy']:.2f}%) against {errors(bh)} "
                    f"({100 * bh['accuracy']:.2f}%)"},
        {"check": "no held-out defect accepted", "met": ah["false_accepts"] == 0,
         "figures": f"{ah['false_accepts']} accepted (the base: {bh['false_accepts']})"},
        {"check": "the base's bar kept on the original validation",
         "met": av["false_accepts"] <= bv["false_accepts"] and errors(av) <= errors(bv),
         "figures": f"{av['false_accepts']} defect(s) accepted and {errors(av)} part(s) wrong against the base's "
                    f"{bv['false_accepts']} and {errors(bv)}"},
    ]


def defects_accepted(names: list[str], labels: np.ndarray, p_base: np.ndarray, t_base: float,
                     p_adapted: np.ndarray, t_adapted: float) -> list[dict[str, Any]]:
    """The defects either bundle accepts, by name with both scores: the parts a line engineer looks
    at before a promotion (a threshold rule cannot catch a part the model scores near zero)."""
    missed = (np.asarray(labels) == 1) & ((np.asarray(p_base) < t_base) | (np.asarray(p_adapted) < t_adapted))
    return [{"image": names[k], "p_base": round(float(p_base[k]), 6), "p_adapted": round(float(p_adapted[k]), 6)}
            for k in np.flatnonzero(missed)]


def _threshold_sentence(threshold: float, tf: dict[str, Any]) -> str:
    oof = f"{tf['out_of_fold_new_line']} out-of-fold new-line scores ({tf['folds']} folds)"
    val = f"{tf['original_validation_int8']} original validation images"
    bar = tf["old_line_bar"]
    keeps = f"within the base's {bar['escapes']} defect(s) accepted and {bar['errors']} part(s) wrong"
    before = tf.get("before_margin", threshold)
    margin = (f" ({tf['rule']}: {tf['rule'].partition(':')[2]} logit(s) below {before:.6g})"
              if tf["rule"].startswith("margin:") else "")
    if bar["kept"]:
        return (f"Threshold {threshold:.6g}{margin} by {tf['policy']} on {oof}, among the thresholds that keep the "
                f"{val} {keeps}.")
    why = f"no threshold kept the {val} {keeps}, so " if bar["kept"] is False else ""
    return f"Threshold {threshold:.6g}{margin}: {why}by {tf['policy']} on {oof} and {val} together."


def _interpolation_sentence(rec: dict[str, Any]) -> str:
    """What share of the fine-tune the weights hold, and what `auto` tried on the way (empty without one)."""
    interp = rec.get("interpolation", {})
    if not interp or (interp["rule"] != "auto" and interp["alpha"] == 1.0):
        return ""
    alpha = interp["alpha"]
    words = {True: "kept", False: "not kept", None: "not asked"}
    tried = "; ".join(f"{t['alpha']:g}: old line's bar {words[t['kept']]}"
                      + ("" if t.get("int8_gate", "passed") == "passed" else ", int8 gate failed")
                      for t in interp["tried"])
    return (f" Weights: {alpha:g} of the fine-tune and {1 - alpha:g} of the base (`--interpolate {interp['rule']}`; "
            f"{tried}).")


def render(result: dict[str, Any]) -> str:
    rec, fig = result["adapt"], result["figures"]
    lines = [f"# Adapted bundle {result['id']}", "",
             f"Base `{rec['base']['bundle']}` ({rec['base']['id']}, threshold {rec['base']['threshold']:.6g}), "
             f"fine-tuned on {len(rec['new_line']['adapt'])} images of `{rec['new_line']['root']}` "
             f"({rec['new_line']['adapt_per_class']} per class) mixed with {rec['original']['mix_images']} of its "
             f"own fit images. {_threshold_sentence(result['threshold'], rec['threshold_from'])}"
             f"{_interpolation_sentence(rec)}", "",
             f"Command: `{rec['options'].get('command') or 'edge-train adapt'}`", "",
             "| bundle | images | accuracy | defects accepted | good rejected |", "|---|---|---|---|---|"]
    for name in ("base", "adapted"):
        for where, label in (("held_out", f"held-out new line ({len(rec['new_line']['held_out'])})"),
                             ("original_validation", f"original validation ({rec['original']['validation_images']})")):
            s = fig[name][where]
            lines.append(f"| {name} | {label} | {100 * s['accuracy']:.2f}% | {s['false_accepts']} | "
                         f"{s['false_rejects']} |")
    checks = fig.get("checks", [])
    if checks:
        met = sum(c["met"] for c in checks)
        lines += ["", f"Before promoting: {met} of {len(checks)} checks met.", ""]
        lines += [f"- {'met' if c['met'] else '**not met**'}: {c['check']}: {c['figures']}" for c in checks]
        if met < len(checks):
            lines += ["", "A candidate that misses one is not ready to decide parts; label more of the line's "
                          "images, or run it in shadow to see what it would change (docs/commissioning.md)."]
    missed = fig.get("held_out_defects_accepted", [])
    if missed:
        lines += ["", f"Held-out defects accepted by either bundle (base threshold {rec['base']['threshold']:.6g}, "
                      f"adapted {result['threshold']:.6g}): look at these before a promotion.", "",
                  "| image | p_defect base | p_defect adapted |", "|---|---|---|"]
        lines += [f"| `{m['image']}` | {m['p_base']:.4f} | {m['p_adapted']:.4f} |" for m in missed]
    lines += ["", "The held-out images were not used for training, for the threshold or for any choice here."]
    return "\n".join(lines) + "\n"
