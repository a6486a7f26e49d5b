"""Per-run report: the notebook's figures as PNGs plus report.md with every number.

report.md links only figures this run wrote and that a bundle may carry. The image sheets
(augmented batch, threshold evidence, misclassified test images) show dataset images,
which the dataset's licence keeps out of the repository (.gitignore), so the report names
them without linking: a bundle copied to models/ keeps a report whose every link works.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edge.offline.dataset import CLASS_NAMES, LoadedImages  # noqa: E402
from edge.vision.partview import circles_and_backdrops  # noqa: E402

if TYPE_CHECKING:
    from trainer.augment import AugmentConfig
    from trainer.options import FitOptions


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def class_proportions(path: Path, counts: dict[str, list[int]]) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(counts))
    for i, cls in enumerate(CLASS_NAMES):
        vals = [c[i] for c in counts.values()]
        bars = ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=cls)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, list(counts))
    ax.set_ylabel("images")
    ax.set_title("Class proportions")
    ax.legend()
    _save(fig, path)


def image_grid(path: Path, images: np.ndarray, titles: list[str], title: str, cols: int = 4,
               colors: list[str] | None = None) -> None:
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 2.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (img, t) in enumerate(zip(images, titles)):
        ax = axes.ravel()[i]
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(t, fontsize=8, color=(colors[i] if colors else "black"))
    fig.suptitle(title)
    _save(fig, path)


def training_curves(path: Path, history: list[dict[str, float]]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [h.get("epoch", i) + 1 for i, h in enumerate(history)]
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [h.get(key, np.nan) for h in history], label="fit")
        ax.plot(epochs, [h.get("val_" + key, np.nan) for h in history], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    _save(fig, path)


def confusion_plot(path: Path, cm: list[list[int]], title: str) -> None:
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(cm, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", fontsize=14,
                    color="white" if cm[i][j] > max(map(max, cm)) / 2 else "black")
    ax.set_xticks([0, 1], ["accept (ok)", "reject (defect)"])
    ax.set_yticks([0, 1], ["ok_front", "def_front"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    _save(fig, path)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def metrics_table(sections: dict[str, dict[str, Any]]) -> str:
    head = ("| set | n | accuracy | defect recall | defect precision | F1 | ok recall | ok precision "
            "| ROC-AUC | false accepts | false rejects | confusion [[ok→ok, ok→def], [def→ok, def→def]] |")
    lines = [head, "|" + "---|" * 12]
    for name, m in sections.items():
        ok = m["per_class"]["ok_front"]
        lines.append(
            f"| {name} | {m['n']} | {_fmt(m['accuracy'])} | {_fmt(m['defect_recall'])} | {_fmt(m['precision'])} "
            f"| {_fmt(m['f1'])} | {_fmt(ok['recall'])} | {_fmt(ok['precision'])} | {_fmt(m['roc_auc'])} "
            f"| {m['false_accepts']} | {m['false_rejects']} | {m['confusion']} |"
        )
    return "\n".join(lines)


def focus_table(focus: dict[str, Any]) -> list[str]:
    """Markdown lines: int8 results at the operating threshold under each fixed focus change."""
    if not focus:
        return []
    lines = ["## Camera focus (int8, every image blurred or sharpened alike)", "",
             "Gaussian blur of σ px; unsharp mask of the given amount at σ 1 px. Accuracy (escapes / good parts "
             "rejected).", "", "| change | validation | test |", "|---|---|---|"]
    for change, sets in focus.items():
        cells = [f"{100 * r['accuracy']:.2f}% ({r['false_accepts']} / {r['false_rejects']})"
                 for r in (sets["validation"], sets["test"])]
        lines.append(f"| {change} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def evidence_lines(ev: dict[str, Any] | None) -> list[str]:
    """Markdown lines: which validation images set the threshold (see threshold.evidence)."""
    if not ev or not ev["lowest_defects"]:
        return []

    def cell(items: list[dict[str, Any]], i: int) -> str:
        return f"`{items[i]['image']}` {items[i]['p_defect']:.4f}" if i < len(items) else ""

    low, high = ev["lowest_defects"], ev["highest_good"]
    rows = [f"| {i + 1} | {cell(low, i)} | {cell(high, i)} |" for i in range(max(len(low), len(high)))]
    return ["## What set the threshold (int8, validation)", "",
            f"Threshold {ev['threshold']:.8g}. Good parts scoring at or above the lowest-scoring defect: "
            f"{ev['good_at_or_above_lowest_defect']}. With few hard defects in validation, the lowest one or two "
            "place the threshold; a model is judged by how far its good parts stay below them.", "",
            "| rank | lowest-scoring defects | highest-scoring good parts |", "|---|---|---|", *rows, ""]


def _output_words(out: dict[str, Any]) -> str:
    """What the int8 output holds, in the report's words (model.json `output`)."""
    if out.get("represents") == "logit":
        return f"output the logit of p_defect, steps of {out['scale']:.3g} log-odds (p_defect = its sigmoid)"
    return f"output p_defect in steps of {out['scale']:.3g}"


def _distillation_line(record: dict | None) -> list[str]:
    if not record:
        return []
    teachers = ", ".join(f"`{t['bundle']}` ({t['architecture']}, float model {t['float_model_sha256'][:12]})"
                         for t in record["teachers"])
    return [f"- Distilled: each target blends the label with the teachers' averaged probability, weight "
            f"{record['weight']}; teachers {teachers}."]


def line_conditions_plot(path: Path, val_sets: dict[str, Any], test_sets: dict[str, Any]) -> None:
    names = list(val_sets)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, label in ((axes[0], "false_reject_rate", "good parts rejected (share)"),
                           (axes[1], "escapes", "defects accepted (count)")):
        ax.bar(x - 0.2, [val_sets[n][key] or 0 for n in names], 0.4, label="validation")
        ax.bar(x + 0.2, [test_sets.get(n, {}).get(key) or 0 for n in names], 0.4, label="test")
        ax.set_xticks(x, names, rotation=70, fontsize=8)
        ax.set_title(label)
        ax.legend()
    axes[0].axhline(0.01, color="red", lw=0.8, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def spread_plot(path: Path, hist: dict[str, Any], belts: list[str]) -> None:
    edges, counts = hist["edges"], hist["counts"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    labels = [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(range(len(counts)), counts)
    ax.set_xticks(range(len(counts)), labels, rotation=30, fontsize=8)
    ax.set_xlabel("spread of a part's p_defect over the belts (max - min)")
    ax.set_ylabel("test parts")
    ax.set_title(f"Same parts on {len(belts)} belts", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def line_sections(metrics: dict[str, Any], figs: Path) -> list[str]:
    """Line conditions, belts, the guard and a second camera: the figures of issue 17."""
    rule, test = metrics.get("line_rule"), metrics.get("line_test")
    if not rule or not test:
        return []
    chosen = rule["candidates"][rule.get("key", str(rule["views"]))]  # "key": since the maximum over views
    val_sets, test_sets = chosen["sets"], test["line_conditions"]["sets"]
    line_conditions_plot(figs / "line_conditions.png", val_sets, test_sets)
    out = ["## Line conditions (validation chooses; test only reports)", "",
           f"Rule: {rule['rule']}. Chosen: **{rule['views']} view(s)"
           f"{', their maximum' if rule.get('aggregate') == 'max' else ''}**, threshold {rule['threshold']:.8g}.", "",
           "| views | threshold | summed validation cost | escapes | one-core latency (ms) |", "|---|---|---|---|---|"]
    out += [f"| {k} | {c['threshold']:.8g} | {c['summed_cost']:g} | {c['escapes_total']} | {c['latency_ms_1_thread']} |"
            for k, c in rule["candidates"].items()]
    out += ["", "| set | validation escapes | validation good rejected | test escapes | test good rejected | "
            "test guard faults |", "|---|---|---|---|---|---|"]
    for name, v in val_sets.items():
        t = test_sets.get(name, {})
        faults = ", ".join(f"{k} {n}" for k, n in (t.get("faults") or {}).items()) or "0"
        out.append(f"| {name} | {v['escapes']} | {v['false_rejects']} ({100 * (v['false_reject_rate'] or 0):.2f}%) | "
                   f"{t.get('escapes')} | {t.get('false_rejects')} ({100 * (t.get('false_reject_rate') or 0):.2f}%) | "
                   f"{faults} |")
    out += ["", "![line conditions](figures/line_conditions.png)", ""]
    b = test["backdrops"]
    spread_plot(figs / "backdrop_spread.png", b["spread_histogram"], b["belts"])
    out += ["## The same test parts on other belts", "",
            f"{b['parts']} test parts on {', '.join(b['belts'])}: decisions identical to the plain image's on "
            f"every belt for {100 * b['identical_decisions_all_belts']:.2f}% of parts; spread of p_defect per part "
            f"median {b['p_spread']['median']}, 95th percentile {b['p_spread']['p95']}, max {b['p_spread']['max']}.",
            "", "| belt | identical decisions | escapes |", "|---|---|---|"]
    out += [f"| {k} | {100 * v:.2f}% | {b['escapes_per_belt'][k]} |" for k, v in b["identical_decisions_per_belt"].items()]
    out += ["", "![backdrop spread](figures/backdrop_spread.png)", ""]
    g = test.get("guard")
    if g:
        out += ["## Guard (faults instead of verdicts)", "",
                f"- Clean test parts faulted: {g['clean_faults']} of {g['clean_parts']} "
                f"({100 * (g['clean_fault_rate'] or 0):.2f}%).",
                f"- Test parts covered ({g['covered_share'][0]:.2f}-{g['covered_share'][1]:.2f} of the disk hidden by a "
                f"hand, glove or tool): {g['covered_faulted']} of {g['covered_parts']} faulted "
                f"({100 * (g['covered_fault_rate'] or 0):.2f}%), {g['covered_accepted']} accepted.", ""]
        out += [f"  - {k}: {v['faulted']} of {v['parts']} faulted, {v['accepted']} accepted" for k, v in g["by_kind"].items()]
        out.append("")
    pits = metrics.get("pit_detection")
    if pits:
        sigmas = list(next(iter(pits["rejected"].values())))
        out += ["## Lone pinholes (validation good parts, one synthetic pit each)", "",
                f"Share of the {pits['parts']} good validation parts not accepted once given one pit on the flange "
                f"(trainer.synth; clean: {100 * pits['clean_rejected']:.1f}%). Rows: how much darker than the metal "
                "at its centre; columns: its Gaussian sigma in px (about 2.4 sigma across). The two validation "
                "pinholes that set thresholds are about 0.15 deep at sigma ~1 (docs/benchmarks.md).", "",
                "| depth | " + " | ".join(f"sigma {s}" for s in sigmas) + " |", "|---" * (len(sigmas) + 1) + "|"]
        out += [f"| {d} | " + " | ".join(f"{100 * r:.1f}%" for r in row.values()) + " |"
                for d, row in pits["rejected"].items()]
        out.append("")
    sc = test.get("second_camera")
    if sc:
        m = sc["summary"]
        (tn, fp), (fn, tp) = m["confusion"]
        out += ["## A second camera", "",
                f"`{sc['folder']}`: {sc['images']} images resized to the model input, at this threshold: accuracy "
                f"{100 * m['accuracy']:.2f}%, {fn} defects accepted, {fp} good parts rejected "
                f"(confusion [[{tn}, {fp}], [{fn}, {tp}]]); guard faults {sc['faults'] or 0}. Its images come from "
                "castings that the dataset's augmented images were made from (see the dataset README).", ""]
    return out


def write(out: Path, meta: dict[str, Any], metrics: dict[str, Any], history: list[dict[str, float]],
          train_set: LoadedImages, test_set: LoadedImages, unique: np.ndarray, float_test: np.ndarray,
          int8_test: np.ndarray, fit_x: np.ndarray, fit_y: np.ndarray, val_y: np.ndarray,
          aug: AugmentConfig, opts: FitOptions, val_images: dict[str, np.ndarray] | None = None) -> None:
    from trainer.augment import (
        augment,  # TensorFlow only needed here for the sample batch
    )

    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    t = metrics["threshold"]
    counts = {
        "fit": [int((fit_y == c).sum()) for c in range(2)],
        "validation": [int((val_y == c).sum()) for c in range(2)],
        "test": [int((test_set.labels == c).sum()) for c in range(2)],
    }
    class_proportions(figs / "class_proportions.png", counts)
    pick = np.random.default_rng(opts.seed).choice(len(fit_x), size=min(16, len(fit_x)), replace=False)
    shown = fit_x[pick]
    circles = circles_and_backdrops(shown, opts.rim_finder)[1] if (aug.part_only or aug.backdrop > 0) else None
    po = (meta.get("input") or {}).get("part_only") or {}
    augmented = augment(shown[..., None], aug, np.array([opts.seed, 0]), circles, po.get("margin", 0.0),
                        float(po.get("fill", 128))).numpy()[..., 0]
    image_grid(figs / "augmented_batch.png", augmented.astype(np.uint8),
               [CLASS_NAMES[int(c)] for c in fit_y[pick]], "Augmented training images")
    sheets = ["figures/augmented_batch.png"]  # dataset images: named in the report, never linked
    training_curves(figs / "training_curves.png", history)
    confusion_plot(figs / "confusion_int8_test.png", metrics["test_all"]["int8"]["confusion"],
                   f"int8, test (715 max), t={t:.4f}")
    y = test_set.labels
    wrong = np.flatnonzero((int8_test >= t) != (y == 1))
    if len(wrong):
        image_grid(figs / "misclassified_int8_test.png", test_set.images[wrong[:24]],
                   [f"{test_set.paths[i].name}\n{CLASS_NAMES[y[i]]} p={int8_test[i]:.3f}" for i in wrong[:24]],
                   "Misclassified test images (int8)", colors=["red"] * len(wrong[:24]))
    else:
        (figs / "misclassified_int8_test.png").unlink(missing_ok=True)  # an earlier run's, in this folder

    ev = metrics.get("threshold_evidence")
    shown = (ev["lowest_defects"] + ev["highest_good"]) if ev else []
    if shown and val_images:
        image_grid(figs / "threshold_evidence.png", np.stack([val_images[e["image"]] for e in shown]),
                   [f"{e['image']}\np={e['p_defect']:.3f}" for e in shown],
                   f"Validation images nearest the threshold {t:.4f} (int8): lowest defects, highest good parts",
                   cols=len(ev["lowest_defects"]) or 1,
                   colors=["red"] * len(ev["lowest_defects"]) + ["green"] * len(ev["highest_good"]))
        sheets.append("figures/threshold_evidence.png")
    else:
        (figs / "threshold_evidence.png").unlink(missing_ok=True)
    if len(wrong):
        sheets.append("figures/misclassified_int8_test.png")
    line_lines = line_sections(metrics, figs)
    ta, tu = metrics["test_all"], metrics["test_unique"]
    rob = metrics["robustness"]
    lines = [
        f"# Training report: {meta['architecture']} ({meta['params']:,} parameters)",
        "",
        f"Command: `{meta['training']['command']}`",
        "",
        f"- Data: `{meta['training']['data']['root']}`; train fingerprint "
        f"`{meta['training']['data']['train_fingerprint'][:16]}`, test fingerprint "
        f"`{meta['training']['data']['test_fingerprint'][:16]}`; {len(fit_y)} fit / {len(val_y)} validation / "
        f"{len(y)} test ({int(unique.sum())} test images that are not byte-identical to a train image).",
        f"- Epochs run: {meta['training']['epochs_run']}, best by val_loss: epoch {meta['training']['best_epoch']}; "
        f"wall time of this invocation {metrics['train_seconds']} s"
        + (" (a --resume: earlier epochs not included)." if "--resume" in meta['training']['command'] else "."),
        *_distillation_line(meta["training"].get("distillation")),
        f"- Operating threshold **{t:.8g}** chosen on validation int8 outputs by policy `{metrics['threshold_policy']}`"
        " (reject when p_defect >= threshold).",
        f"- int8 model: {meta['sha256'][:12]}, uint8 input scale {meta['input']['scale']} zero point "
        f"{meta['input']['zero_point']}; {_output_words(meta['output'])}; median latency "
        f"{metrics['int8_latency_ms_1_thread']} ms on one thread.",
        "",
        "## Test metrics at the operating threshold",
        "",
        metrics_table({
            "int8, test (all)": ta["int8"], "int8, test without train duplicates": tu["int8"],
            "float, test (all)": ta["float"], "float, test without train duplicates": tu["float"],
            "float, test (all), t=0.5": ta["float_at_0.5"],
            "int8, validation": metrics["validation"]["int8"],
        }),
        "",
        f"int8 vs float on test: decision agreement {metrics['int8_vs_float']['decision_agreement']:.4f}, "
        f"max |Δp| {metrics['int8_vs_float']['max_abs_diff']}, mean |Δp| {metrics['int8_vs_float']['mean_abs_diff']}.",
        "",
        "## Robustness (int8, test images perturbed as the line camera may)",
        "",
        f"Perturbation (seed {rob['seed']}): {rob['perturbation']}",
        "",
        metrics_table({"int8, perturbed test": rob["int8"]}),
        "",
        *focus_table(metrics.get("focus", {})),
        *line_lines,
        *evidence_lines(ev),
        "## Figures",
        "",
        "![class proportions](figures/class_proportions.png)",
        "![training curves](figures/training_curves.png)",
        "![confusion](figures/confusion_int8_test.png)",
        "",
        "Image sheets in the run folder, not linked and not shipped with a bundle: they show dataset images. "
        + ", ".join(f"`{name}`" for name in sheets) + ".",
    ]
    if len(wrong):
        lines += ["", "Misclassified test images (int8):", ""]
        lines += [f"- `{test_set.paths[i].parent.name}/{test_set.paths[i].name}` p_defect={int8_test[i]:.4f}"
                  for i in wrong]
    if metrics["skipped_files"]:
        lines += ["", "## Skipped files", ""] + [f"- `{p}`: {why}" for p, why in metrics["skipped_files"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
