"""Small inline-SVG charts for the HTML report: no library, no script, no network.

Two shapes cover the report: a time chart (stacked columns and lines, an optional right axis,
dashed reference lines) and a horizontal bar chart. Hovering a point shows its value through
SVG <title> elements, which every browser renders without JavaScript.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

FONT = "font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif"
AXIS_COLOR = "#94a3b8"
GRID_COLOR = "#e2e8f0"
TEXT_COLOR = "#334155"


@dataclass
class Series:
    name: str
    values: Sequence[float | None]
    color: str
    dashed: bool = False
    right_axis: bool = False


@dataclass
class Reference:
    """A horizontal line at a value on the left axis, e.g. a latency threshold."""

    label: str
    value: float
    color: str = "#dc2626"


@dataclass
class Margins:
    left: int = 64
    right: int = 64
    top: int = 36
    bottom: int = 58


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5, 5 × 10^k steps)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < high - step * 1e-9 or len(ticks) < 2:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _decimals(x: float) -> int:
    """How many decimals show x exactly (up to 6): 2.5 → 1, 0.005 → 3, 20 → 0."""
    return next((d for d in range(7) if abs(round(x, d) - x) < 1e-9 * max(1.0, abs(x))), 6)


def fmt_number(value: float, step: float | None = None) -> str:
    """Compact (12.5k, 49.995M), with enough decimals that ticks `step` apart stay distinct."""
    magnitude = abs(value)
    for unit, suffix, from_ in ((1e9, "G", 1e9), (1e6, "M", 1e6), (1e3, "k", 1e4)):
        if magnitude >= from_:
            decimals = _decimals(step / unit) if step else 3
            text = f"{value / unit:.{decimals}f}"
            if "." in text:
                text = text.rstrip("0").rstrip(".")
            return text + suffix
    if float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.3g}"


def _scale(lo: float, hi: float, out_lo: float, out_hi: float):
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


def _range(values: list[float], from_zero: bool) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if from_zero:
        lo = min(0.0, lo)
    elif hi - lo < 1e-9:
        pad = abs(hi) * 0.01 or 1.0
        lo, hi = lo - pad, hi + pad
    else:
        pad = (hi - lo) * 0.08
        lo, hi = lo - pad, hi + pad
    return lo, hi


def time_chart(
    title: str,
    x: Sequence[float],
    *,
    lines: Sequence[Series] = (),
    stacked: Sequence[Series] = (),
    references: Sequence[Reference] = (),
    y_label: str = "",
    y2_label: str = "",
    x_label: str = "seconds since start",
    from_zero: bool = True,
    width: int = 720,
    height: int = 280,
) -> str:
    """Stacked columns (left axis), lines (left or right axis) and reference lines over time."""
    m = Margins()
    plot_w, plot_h = width - m.left - m.right, height - m.top - m.bottom
    n = len(x)
    x_hi = (x[-1] if n else 1.0) + ((x[1] - x[0]) if n > 1 else 1.0)
    sx = _scale(x[0] if n else 0.0, x_hi, m.left, m.left + plot_w)

    stack_tops = [sum((s.values[i] or 0.0) for s in stacked) for i in range(n)] if stacked else []
    left_values = [v for s in lines if not s.right_axis for v in s.values if v is not None]
    left_values += stack_tops + [r.value for r in references]
    right_values = [v for s in lines if s.right_axis for v in s.values if v is not None]
    ly_lo, ly_hi = _range(left_values, from_zero)
    left_ticks = nice_ticks(ly_lo, ly_hi)
    sy = _scale(left_ticks[0], left_ticks[-1], m.top + plot_h, m.top)
    right_ticks = nice_ticks(*_range(right_values, True)) if right_values else []
    sy2 = _scale(right_ticks[0], right_ticks[-1], m.top + plot_h, m.top) if right_ticks else sy

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{escape(title)}" style="{FONT}">',
        f'<text x="{m.left}" y="20" font-size="14" font-weight="600" fill="{TEXT_COLOR}">'
        f"{escape(title)}</text>",
    ]
    for tick in left_ticks:
        y = sy(tick)
        out.append(
            f'<line x1="{m.left}" x2="{m.left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID_COLOR}"/>'
            f'<text x="{m.left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="{TEXT_COLOR}">{fmt_number(tick, left_ticks[1] - left_ticks[0])}</text>'
        )
    for tick in right_ticks:
        y = sy2(tick)
        out.append(
            f'<text x="{m.left + plot_w + 6}" y="{y + 4:.1f}" font-size="11" '
            f'fill="{TEXT_COLOR}">{fmt_number(tick, right_ticks[1] - right_ticks[0])}</text>'
        )
    for tick in nice_ticks(x[0] if n else 0.0, x_hi, 8):
        if tick > x_hi or (n and tick < x[0]):  # no tick left of the first column
            continue
        xx = sx(tick)
        out.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{m.top + plot_h}" y2="{m.top + plot_h + 4}" '
            f'stroke="{AXIS_COLOR}"/><text x="{xx:.1f}" y="{m.top + plot_h + 16}" font-size="11" '
            f'text-anchor="middle" fill="{TEXT_COLOR}">{fmt_number(tick)}</text>'
        )
    out.append(
        f'<line x1="{m.left}" x2="{m.left + plot_w}" y1="{m.top + plot_h}" y2="{m.top + plot_h}" '
        f'stroke="{AXIS_COLOR}"/>'
        f'<text x="{m.left + plot_w / 2:.0f}" y="{height - 26}" font-size="11" '
        f'text-anchor="middle" fill="{TEXT_COLOR}">{escape(x_label)}</text>'
        f'<text transform="translate(14 {m.top + plot_h / 2:.0f}) rotate(-90)" font-size="11" '
        f'text-anchor="middle" fill="{TEXT_COLOR}">{escape(y_label)}</text>'
    )
    if y2_label:
        out.append(
            f'<text transform="translate({width - 10} {m.top + plot_h / 2:.0f}) rotate(90)" '
            f'font-size="11" text-anchor="middle" fill="{TEXT_COLOR}">{escape(y2_label)}</text>'
        )
    if stacked and n:
        bar_w = max(1.0, (sx(x_hi) - sx(x[0])) / n * 0.85)
        base = [0.0] * n
        for s in stacked:
            for i, v in enumerate(s.values):
                if not v:
                    continue
                top, bottom = sy(base[i] + v), sy(base[i])
                out.append(
                    f'<rect x="{sx(x[i]):.1f}" y="{top:.1f}" width="{bar_w:.1f}" '
                    f'height="{max(bottom - top, 0.5):.1f}" fill="{s.color}">'
                    f"<title>{escape(s.name)} t={fmt_number(x[i])}s: {v:.3g}</title></rect>"
                )
                base[i] += v
    for ref in references:
        y = sy(ref.value)
        out.append(
            f'<line x1="{m.left}" x2="{m.left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{ref.color}" stroke-dasharray="6 4" stroke-width="1.2"/>'
            f'<text x="{m.left + plot_w - 4}" y="{y - 4:.1f}" font-size="10" text-anchor="end" '
            f'fill="{ref.color}">{escape(ref.label)}</text>'
        )
    half = ((sx(x[1]) - sx(x[0])) / 2) if n > 1 else 0.0
    for s in lines:
        scale_y = sy2 if s.right_axis else sy
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        segment: list[str] = []
        segments = []
        for i, v in enumerate(s.values):
            if v is None or not math.isfinite(v):
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{sx(x[i]) + half:.1f},{scale_y(v):.1f}")
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{s.color}"/>')
            else:
                out.append(
                    f'<polyline fill="none" stroke="{s.color}" stroke-width="2"{dash} '
                    f'points="{" ".join(seg)}"><title>{escape(s.name)}</title></polyline>'
                )
    legend = [(s.name, s.color, s.dashed) for s in stacked] + [
        (s.name + (" (right axis)" if s.right_axis and lines else ""), s.color, s.dashed)
        for s in lines
    ]
    lx, ly = m.left, height - 8
    for name, color, dashed in legend:
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(
            f'<line x1="{lx}" x2="{lx + 16}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
            f'stroke-width="4"{dash}/><text x="{lx + 20}" y="{ly}" font-size="11" '
            f'fill="{TEXT_COLOR}">{escape(name)}</text>'
        )
        lx += 28 + 6.2 * len(name)
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    title: str, bars: Sequence[tuple[str, float, str]], *, width: int = 720, unit: str = ""
) -> str:
    """Horizontal bars with their value and share of the total."""
    row_h, label_w, top = 24, 150, 34
    height = top + row_h * max(len(bars), 1) + 12
    total = sum(v for _, v, _ in bars) or 1.0
    peak = max([v for _, v, _ in bars] + [1.0])
    plot_w = width - label_w - 130
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{escape(title)}" style="{FONT}">',
        f'<text x="8" y="20" font-size="14" font-weight="600" fill="{TEXT_COLOR}">'
        f"{escape(title)}</text>",
    ]
    if not bars:
        out.append(f'<text x="8" y="{top + 14}" font-size="12" fill="{TEXT_COLOR}">no data</text>')
    for i, (label, value, color) in enumerate(bars):
        y = top + i * row_h
        w = max(plot_w * value / peak, 1.0 if value else 0.0)
        out.append(
            f'<text x="{label_w - 8}" y="{y + 15}" font-size="12" text-anchor="end" '
            f'fill="{TEXT_COLOR}">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" rx="3" '
            f'fill="{color}"><title>{escape(label)}: {fmt_number(value)}{unit}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" font-size="12" fill="{TEXT_COLOR}">'
            f"{fmt_number(value)}{unit} ({100 * value / total:.1f}%)</text>"
        )
    out.append("</svg>")
    return "".join(out)
