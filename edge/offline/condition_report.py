"""`edge-inspect --replay DIR --conditions`: the labelled folder again under line conditions.

Beside the plain replay: each line condition (edge.offline.conditions) applied to every image,
the same parts on every belt, and the guard on the same parts covered, all judged at the
bundle's threshold exactly as the daemon decides (edge.inference.judge). For a line engineer who
wants to see, before commissioning, what another belt or lighting would do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.inference.bundle import Bundle
from edge.inference.judge import Judge
from edge.offline import evaluate
from edge.offline.dataset import list_labelled, load_samples


def run(folder: Path, bundle: Bundle, threshold: float | None = None, ratio: float = 20.0) -> dict[str, Any]:
    """Figures for a labelled folder (def_front/ok_front or defect/ok); DatasetError if it is not one."""
    loaded = load_samples(list_labelled(folder, require_both=False))
    judge = Judge.from_bundle(bundle, threshold)
    sets = evaluate.line_sets(judge, loaded.images, loaded.labels)
    spread = evaluate.backdrop_spread(judge, loaded.images, loaded.labels)
    spread.pop("spread_per_part")
    return {"images": len(loaded.paths), "threshold": judge.threshold, "cost_ratio": ratio,
            "line_conditions": evaluate.summarise_sets(sets, judge.threshold, ratio),
            "backdrops": spread,
            "guard": evaluate.guard_figures(judge, loaded.images) if judge.guard is not None else None}


def format_text(res: dict[str, Any]) -> str:
    lines = ["", f"line conditions ({res['images']} images each, threshold {res['threshold']:.8g}):",
             f"  {'set':16s} {'escapes':>8s} {'good rejected':>14s} {'guard faults':>13s}"]
    for name, v in res["line_conditions"]["sets"].items():
        fr = f"{v['false_rejects']} ({100 * (v['false_reject_rate'] or 0):.1f}%)"
        lines.append(f"  {name:16s} {v['escapes']:>8d} {fr:>14s} {sum(v['faults'].values()):>13d}")
    b = res["backdrops"]
    lines.append(f"same parts on {len(b['belts'])} belts: identical decisions on every belt for "
                 f"{100 * (b['identical_decisions_all_belts'] or 0):.2f}% of parts; p_defect spread per part "
                 f"median {b['p_spread']['median'] if b['p_spread'] else 'n/a'}, "
                 f"max {b['p_spread']['max'] if b['p_spread'] else 'n/a'}")
    g = res.get("guard")
    if g:
        lines.append(f"guard: {g['clean_faults']} of {g['clean_parts']} clean parts faulted; "
                     f"{g['covered_faulted']} of {g['covered_parts']} covered parts faulted, "
                     f"{g['covered_accepted']} accepted")
    else:
        lines.append("guard: this bundle has none (model.json: guard)")
    return "\n".join(lines)
