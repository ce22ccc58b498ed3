"""A job's stage timeline as a server-rendered SVG bar chart: one bar per stage, placed where it ran.

Stages follow each other from the first instance received: receive, assemble,
queue, the worker's five, transfer (lease to filing minus the worker's stages),
deliver. Each bar starts where the previous one ended and is as long as its
stage took, so the chart reads as a timeline and as bars; the numbers are
written beside each bar and in the SVG's description, so nothing depends on
seeing the colours.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

from engine.ledger.latency import WORKER_STAGES

TIMELINE_STAGES = ("receive", "assemble", "queue", *WORKER_STAGES, "transfer", "deliver")
_COLOURS = {"receiver": "#1f5fa8", "worker": "#b35900", "after": "#2e7d4f"}
LABEL_W, CHART_W, VALUE_W, ROW_H, BAR_H, TOP = 96, 420, 84, 20, 14, 4


def _group(stage: str) -> str:
    return "worker" if stage in WORKER_STAGES else ("receiver" if stage in ("receive", "assemble", "queue")
                                                    else "after")


def seconds_text(seconds: float) -> str:
    """A duration as people read it: ms below a second, else seconds."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def timeline_svg(stages_s: dict[str, float], element_id: str, caption: str) -> Markup:
    """The chart of one job's ``stages_s`` (the study report's), with ``element_id`` for its title and description."""
    rows = [(stage, float(stages_s[stage])) for stage in TIMELINE_STAGES if stage in stages_s]
    if not rows:
        return Markup("")
    total = sum(seconds for _, seconds in rows) or 1.0
    scale = CHART_W / total
    height = TOP * 2 + ROW_H * len(rows)
    width = LABEL_W + CHART_W + VALUE_W
    description = "; ".join(f"{stage} {seconds_text(seconds)}" for stage, seconds in rows)
    parts = [f'<svg class="timeline" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
             f' aria-labelledby="{escape(element_id)}-t {escape(element_id)}-d" xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{escape(element_id)}-t">{escape(caption)}</title>',
             f'<desc id="{escape(element_id)}-d">{escape(description)}</desc>']
    start = 0.0
    for index, (stage, seconds) in enumerate(rows):
        y = TOP + index * ROW_H
        x = LABEL_W + start * scale
        bar = max(seconds * scale, 1.5)  # a stage of a few microseconds still shows
        parts.append(f'<text x="{LABEL_W - 6}" y="{y + BAR_H - 2}" text-anchor="end" class="tl-label">'
                     f'{escape(stage)}</text>')
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{bar:.1f}" height="{BAR_H}" rx="2"'
                     f' fill="{_COLOURS[_group(stage)]}"/>')
        parts.append(f'<text x="{LABEL_W + CHART_W + 6}" y="{y + BAR_H - 2}" class="tl-value">'
                     f'{escape(seconds_text(seconds))}</text>')
        start += seconds
    parts.append("</svg>")
    return Markup("".join(parts))
