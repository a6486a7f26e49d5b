"""Yield plots as server-drawn SVG: no chart library, no script, a few kB per plot, readable
on a tablet and printable. Stacked bars: accepted, rejected, faults."""

from __future__ import annotations

from html import escape

from edge.hmi.yields import Bucket

COLOURS = ("#2e7d32", "#c62828", "#ef8f00")  # accepted, rejected, faults
NAMES = ("accepted", "rejected", "faults")


def _nice(top: int) -> int:
    """A round axis maximum >= top."""
    if top <= 5:
        return 5
    step = 10 ** (len(str(top)) - 1)
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= top:
            return int(m * step)
    return top


def bars(buckets: list[Bucket], title: str, width: int = 960, height: int = 260) -> str:
    left, right, top, bottom = 48, 8, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    ymax = _nice(max((b.total for b in buckets), default=0))
    n = max(1, len(buckets))
    slot = plot_w / n
    bar = max(1.0, slot * 0.8)
    label_px = 7 * max((len(b.label) for b in buckets), default=4) + 10  # ~7 px a character at the axis font
    every = max(1, -(-n * label_px // plot_w))
    out = [(f'<svg class="plot" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
           f'xmlns="http://www.w3.org/2000/svg">'),
           f'<text x="{left}" y="16" class="plot-title">{escape(title)}</text>']
    for i, name in enumerate(NAMES):
        x = width - right - (3 - i) * 100
        out.append(f'<rect x="{x}" y="7" width="10" height="10" fill="{COLOURS[i]}"/>'
                   f'<text x="{x + 14}" y="16" class="plot-legend">{name}</text>')
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="plot-axis">{int(ymax * frac)}</text>')
    for i, b in enumerate(buckets):
        x = left + i * slot + (slot - bar) / 2
        y = top + plot_h
        tip = (f"{b.label}: {b.counts[0]} accepted, {b.counts[1]} rejected, {b.counts[2]} faults"
               + (f", yield {b.yield_pct:.1f}%" if b.yield_pct is not None else ""))
        out.append(f'<g data-label="{escape(b.label)}" data-counts="{",".join(map(str, b.counts))}">'
                   f"<title>{escape(tip)}</title>")
        for k in range(3):
            h = plot_h * b.counts[k] / ymax if ymax else 0
            if h > 0:
                y -= h
                out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{COLOURS[k]}"/>')
        out.append("</g>")
        if i % every == 0:
            out.append(f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                       f'class="plot-axis">{escape(b.label)}</text>')
    out.append("</svg>")
    return "".join(out)
