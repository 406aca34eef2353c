"""Chart geometry for the server-rendered SVG charts (no JavaScript, nothing from a CDN).

Each function turns data into shapes with pixel coordinates; the templates draw them
(``templates/_charts.html``), so every label goes through Jinja's autoescaping. Shapes keep
their data values (``id``, ``value``, …) so the page can carry them as ``data-*`` attributes,
which is what the browser tests compare with the catalog.

Example:
    >>> chart = bars([("fc1", 40.0), ("fc2", 30.0)])
    >>> [b["width"] for b in chart["bars"]], chart["bars"][0]["label"]
    ([360.0, 270.0], 'fc1')
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

__all__ = ["bars", "scatter", "timeline"]

#: Plot width in pixels of the bar area, the scatter plots and the timeline.
PLOT_W = 360.0
ROW_H = 16.0
SCATTER_W, SCATTER_H = 260.0, 200.0
TIMELINE_W = 760.0
MARGIN = {"left": 64.0, "right": 36.0, "top": 12.0, "bottom": 40.0}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def bars(items: list[tuple[str, float | None]], label_w: float = 180.0) -> dict[str, Any]:
    """Horizontal bars from 0, one row per item; an infinite value (exact) draws full width,
    and the lowest value is flagged ``worst`` (the layer that loses the most)."""
    finite = [v for _, v in items if _finite(v)]
    top = max(finite, default=1.0) or 1.0
    worst = min(finite, default=None)
    out = []
    for i, (label, value) in enumerate(items):
        inf = value is not None and not _finite(value) and value > 0
        frac = 1.0 if inf else (max(0.0, value) / top if _finite(value) else 0.0)
        out.append({"label": label, "value": value, "inf": inf, "y": i * ROW_H,
                    "worst": len(items) > 1 and value == worst,
                    "width": round(frac * PLOT_W, 1),
                    "text": "inf" if inf else ("-" if not _finite(value) else f"{value:.2f}")})
    return {"bars": out, "label_w": label_w, "plot_w": PLOT_W,
            "width": label_w + PLOT_W + 60, "height": len(items) * ROW_H + 4, "max": top}


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    return [lo + (hi - lo) * k / n for k in range(n + 1)]


def scatter(points: list[dict[str, Any]], x: str, y: str, marked: dict[int, str]) -> dict:
    """Points ``(p[x], p[y])`` in a plot; ``marked`` maps point ids to a mark ("best size")."""
    xs, ys = [p[x] for p in points], [p[y] for p in points]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad_x, pad_y = (x_hi - x_lo) * 0.05 or max(abs(x_hi), 1) * 0.05, \
        (y_hi - y_lo) * 0.05 or max(abs(y_hi), 1e-6) * 0.05
    x_lo, x_hi, y_lo, y_hi = x_lo - pad_x, x_hi + pad_x, y_lo - pad_y, y_hi + pad_y

    def px(v: float) -> float:
        return round(MARGIN["left"] + (v - x_lo) / (x_hi - x_lo) * SCATTER_W, 1)

    def py(v: float) -> float:
        return round(MARGIN["top"] + (y_hi - v) / (y_hi - y_lo) * SCATTER_H, 1)

    shapes = [{**p, "cx": px(p[x]), "cy": py(p[y]), "mark": marked.get(p["id"])}
              for p in points]
    return {
        "points": shapes, "x": x, "y": y,
        "x_ticks": [(px(v), v) for v in _ticks(x_lo, x_hi)],
        "y_ticks": [(py(v), v) for v in _ticks(y_lo, y_hi)],
        "left": MARGIN["left"], "top": MARGIN["top"], "plot_w": SCATTER_W,
        "plot_h": SCATTER_H, "width": MARGIN["left"] + SCATTER_W + MARGIN["right"],
        "height": MARGIN["top"] + SCATTER_H + MARGIN["bottom"],
    }


def timeline(jobs: list[dict[str, Any]], label_w: float = 220.0) -> dict[str, Any]:
    """One row per job: its wait before the first attempt, then each attempt, on one time axis.

    ``jobs`` are :func:`~mono_quant.scheduler.web.views.batch_detail` jobs; times are laid out
    from the earliest job creation, running attempts end at the latest time seen.
    """
    times: list[datetime] = [t for j in jobs for t in (j["created_at"], j["queued_at"])
                             if t is not None]
    times += [t for j in jobs for a in j["attempt_list"]
              for t in (a["started_at"], a["finished_at"]) if t is not None]
    if not times:
        return {"rows": [], "width": label_w + TIMELINE_W + 20, "height": 0, "span_s": 0.0}
    t0, t1 = min(times), max(times)
    span = max((t1 - t0).total_seconds(), 1e-3)

    def px(t: datetime) -> float:
        return round((t - t0).total_seconds() / span * TIMELINE_W, 1)

    rows = []
    for i, j in enumerate(jobs):
        segs = []
        attempts = j["attempt_list"]
        waited_from = j["queued_at"] or j["created_at"]
        if attempts and waited_from is not None:
            x0, x1 = px(waited_from), px(attempts[0]["started_at"])
            segs.append({"kind": "waiting", "x": x0, "w": max(0.0, x1 - x0), "title": "waiting"})
        for a in attempts:
            x0, x1 = px(a["started_at"]), px(a["finished_at"] or t1)
            outcome = a["outcome"] or "running"
            segs.append({"kind": outcome, "x": x0, "w": max(1.0, x1 - x0),
                         "title": f"attempt {a['number']}: {outcome}, {a['duration_s']} s"})
        rows.append({"job_id": j["id"], "label": j["name"], "y": i * ROW_H, "segments": segs})
    return {"rows": rows, "label_w": label_w, "plot_w": TIMELINE_W, "span_s": round(span, 3),
            "width": label_w + TIMELINE_W + 20, "height": len(rows) * ROW_H + 24}
