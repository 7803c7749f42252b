"""Geometry for the server-rendered SVG charts: the funnel, reliability diagrams, agreement and cost across runs.

Pure functions from figures to coordinates (SVG user units, y growing down), so that templates only place
what is computed here and the arithmetic is unit-tested (tests/judging/test_charts.py). No figure is computed
here but the interval of a run's precision of accepts (``runs_chart``): counts come from ``selectors.funnel``,
reliability bins from ``calibration.reliability_bins``, kappa and its interval from
``selectors.run_agreement(..., interval=True)``; this module scales them. Text is
returned as plain strings; the templates escape it (rule, model and run names are user input).
"""

import math
from collections.abc import Sequence
from decimal import Decimal
from urllib.parse import urlencode

from annotations.statistics import SMALL_N, wilson_interval


def scale(value: float, domain: tuple[float, float], extent: tuple[float, float]) -> float:
    """Map ``value`` linearly from ``domain`` (low, high) onto ``extent`` (start, end; end may be below start,
    as for a y axis), clipped to the extent, rounded to 0.1 unit. ValueError for an empty domain."""
    low, high = domain
    if high <= low:
        raise ValueError(f"empty domain {domain!r}: high must exceed low")
    share = min(max((value - low) / (high - low), 0.0), 1.0)
    start, end = extent
    return round(start + share * (end - start), 1)


def _share_text(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.1f} %"


# The funnel's stages, in order: (key in selectors.funnel's dict, label, items-list query or None). A stage links
# into the items list only where a filter there gives exactly its count (the same links as the funnel's numbers).
FUNNEL_STAGES = (
    ("imported", "imported", {}),
    ("sme_reviewed", "SME reviewed", None),  # linked to basis=sme when the gate's SME decisions match it
    ("judged", "judged by the policy", None),
    ("vetoed_total", "vetoed by a rule", {"basis": "rule"}),
    ("accepted", "accepted", {"outcome": "accept"}),
    ("rejected", "rejected", {"outcome": "reject"}),
    ("pending", "pending", {"outcome": "pending"}),
    ("undecided", "not yet gated", {"outcome": "ungated"}),
)
FUNNEL_LABEL_W, FUNNEL_BAR_W, FUNNEL_VALUE_W, FUNNEL_ROW_H, FUNNEL_BAR_H = 170, 300, 130, 28, 18


def funnel_chart(figures: dict, items_url: str) -> dict:
    """Horizontal bars for the funnel (``selectors.funnel``'s dict): one per stage of ``FUNNEL_STAGES``, the
    "not yet gated" one only when some item is. Each bar's length is its count's share of the items imported
    (at least 2 units when the count is not 0, so that it shows); ``href`` is ``items_url`` with the stage's
    filter, or None where the items list has no filter for exactly that count ("SME reviewed" links to
    ``?basis=sme`` when the gate's SME decisions ``by_sme`` equal it, as they do once every item is gated).

    Returns ``{"rows": [{"key", "label", "count", "share" (None without items), "share_text", "text" (the
    accessible sentence), "href", "y", "bar_y", "text_y", "width", "value_x"}], "width", "height",
    "bar_x", "label_x", "bar_max", "total"}``.
    """
    total = figures.get("imported") or 0
    rows = []
    for key, label, query in FUNNEL_STAGES:
        count = int(figures.get(key) or 0)
        if key == "undecided" and not count:
            continue
        if key == "sme_reviewed" and count == figures.get("by_sme"):
            query = {"basis": "sme"}
        share = count / total if total else None
        width = round((share or 0) * FUNNEL_BAR_W, 1)
        if count and width < 2:
            width = 2.0
        y = 4 + len(rows) * FUNNEL_ROW_H
        text = f"{label}: {count} item{'' if count == 1 else 's'}"
        text += f", {_share_text(share)} of the {total} imported" if share is not None else ""
        rows.append(
            {
                "key": key,
                "label": label,
                "count": count,
                "share": share,
                "share_text": _share_text(share),
                "text": text,
                "href": None if query is None else items_url + (f"?{urlencode(query)}" if query else ""),
                "y": y,
                "bar_y": y + (FUNNEL_ROW_H - FUNNEL_BAR_H) / 2,
                "text_y": y + FUNNEL_ROW_H / 2,
                "width": width,
                "value_x": FUNNEL_LABEL_W + width + 6,
            }
        )
    return {
        "rows": rows,
        "total": total,
        "label_x": FUNNEL_LABEL_W - 8,
        "bar_x": FUNNEL_LABEL_W,
        "bar_max": FUNNEL_BAR_W,
        "width": FUNNEL_LABEL_W + FUNNEL_BAR_W + FUNNEL_VALUE_W,
        "height": 8 + len(rows) * FUNNEL_ROW_H,
    }


def reliability_diagram(bins: Sequence[dict], *, side: int = 240) -> dict:
    """SVG geometry for ``calibration.reliability_bins``: per non-empty bin a bar (SME accept rate), its
    Wilson 95 % whisker, a dot at the bin's mean confidence and its n written above the bar; the diagonal is
    perfect calibration. ``side`` is the square plot's side (240 on the run page, smaller where it is a
    thumbnail; below 160 the n labels are left to each bar's title, where they would overlap)."""
    left, top = 44, 12 + 12  # room above for the n of a bin at 1.0
    domain = (0.0, 1.0)

    def x(value: float) -> float:
        return scale(value, domain, (left, left + side))

    def y(value: float) -> float:
        return scale(value, domain, (top + side, top))

    bars = []
    for row in bins:
        if not row["n"]:
            continue
        low, high = row["interval"]
        middle = (row["low"] + row["high"]) / 2
        bars.append(
            {
                **row,
                "x": x(row["low"]) + 1,
                "width": round((row["high"] - row["low"]) * side - 2, 1),
                "y": y(row["accept_rate"]),
                "height": round(row["accept_rate"] * side, 1),
                "whisker_x": x(middle),
                "whisker_low": y(low),
                "whisker_high": y(high),
                "dot_x": x(row["mean_confidence"]),
                "dot_y": y(row["mean_confidence"]),
                # Above the whisker's top (or the bar's, whichever is higher), inside the frame's margin.
                "n_y": round(min(y(high), y(row["accept_rate"])) - 3, 1),
            }
        )
    step = 2 if side >= 160 else 5  # tenths between ticks: a thumbnail's would overlap at 0.2
    ticks = [{"value": t / 10, "x": x(t / 10), "y": y(t / 10)} for t in range(0, 11, step)]
    return {
        "bars": bars,
        "ticks": ticks,
        "n_labels": side >= 160,
        "n": sum(row["n"] for row in bins),
        "left": left,
        "top": top,
        "side": side,
        "middle": left + side / 2,
        "vmiddle": top + side / 2,
        "right": left + side,
        "bottom": top + side,
        "width": left + side + 12,
        "height": top + side + 40,
    }


RUNS_MAX = 20  # runs the chart shows (the newest); the tables beside it list them all
RUNS_WIDTH, RUNS_LEFT, RUNS_RIGHT = 640, 52, 16
KAPPA_TOP, KAPPA_BOTTOM = 20, 180
COST_TOP, COST_BOTTOM = 236, 300


def _cost_text(cost: float | None, tokens: int) -> str:
    if cost is not None:
        return f"{cost:.4f} (at the endpoint's prices)"
    return f"{tokens:,} tokens (no prices)"


def runs_chart(runs: Sequence[dict], *, kappa_domain: tuple[float, float] | None = None) -> dict:
    """Agreement with the SMEs and cost, one column per run in time order (oldest left).

    ``runs``: ``[{"id", "label", "href", "when" (text), "agreement": selectors.run_agreement(...,
    interval=True), "cost": Decimal or float or None (None: its prices are unknown), "tokens": int,
    "sent": items sent to the judge, "highlight": bool}]``, in time order; only the last ``RUNS_MAX``
    are drawn. Top panel: Cohen's kappa as a dot with its 95 % bootstrap interval as a whisker, clipped to
    ``kappa_domain`` (default: from the lowest kappa or interval end, down to a multiple of the ticks' step and at
    most -0.25, up to 1); a run with n below ``annotations.statistics.SMALL_N`` is drawn hollow and flagged
    ``small_n``; one whose kappa is undefined has no dot. Bottom panel: a bar per run, its cost (tokens at the prices
    the run started with: USD for the usual price lists) when any run has a known non-zero cost, else its
    tokens; a run of unknown cost then has no bar, and a "?". Every run keeps its n and interval in ``text``, the
    sentence a screen reader reads, with the agreement and the precision of accepts (from the agreement's
    confusion matrix, with its Wilson 95 % interval over the judge's accepts) where there are any.

    Returns ``{"marks": [...], "ticks": [{"value", "y"}], "zero_y", "width", "height", "left", "right",
    "kappa_top", "kappa_bottom", "cost_top", "cost_bottom", "cost_kind" ("cost" | "tokens"), "shown", "total"}``.
    """
    total = len(runs)
    runs = list(runs)[-RUNS_MAX:]
    if kappa_domain is None:
        ends = [-0.25]  # at least a little below 0 (chance), so that a judge at chance is not on the edge
        for run in runs:
            agreement = run["agreement"]
            if agreement.get("cohen_kappa") is not None:
                ends.append(agreement["cohen_kappa"])
            if agreement.get("kappa_ci"):
                ends.append(agreement["kappa_ci"][0])
        lowest = min(ends)  # down to a multiple of the ticks' step: 0.25 near 0, else 0.5
        kappa_domain = (max(-1.0, math.floor(lowest * 4) / 4 if lowest >= -0.25 else math.floor(lowest * 2) / 2), 1.0)

    def ky(value: float) -> float:
        return scale(value, kappa_domain, (KAPPA_BOTTOM, KAPPA_TOP))

    costs = [float(run["cost"]) for run in runs if run.get("cost") is not None]
    cost_kind = "cost" if any(costs) else "tokens"
    values = [
        (float(run["cost"]) if run.get("cost") is not None else None)
        if cost_kind == "cost"
        else float(run.get("tokens") or 0)
        for run in runs
    ]
    biggest = max([v for v in values if v is not None], default=0.0) or 1.0
    plot = RUNS_WIDTH - RUNS_LEFT - RUNS_RIGHT
    slot = plot / len(runs) if runs else plot
    marks = []
    for index, (run, value) in enumerate(zip(runs, values, strict=True)):
        agreement = run["agreement"]
        n, kappa, ci = agreement.get("n") or 0, agreement.get("cohen_kappa"), agreement.get("kappa_ci")
        x = round(RUNS_LEFT + (index + 0.5) * slot, 1)
        small_n = n < SMALL_N
        cost = None if run.get("cost") is None else float(run["cost"])
        bar_h = 0.0 if value is None else round(value / biggest * (COST_BOTTOM - COST_TOP), 1)
        if value and bar_h < 1:
            bar_h = 1.0
        if kappa is None:
            kappa_text = f"Cohen's κ undefined (n = {n} SME-labelled items)"
        else:
            interval = f"95 % CI {ci[0]:.3f} to {ci[1]:.3f}" if ci else "no interval: every bootstrap resample agrees"
            kappa_text = f"Cohen's κ {kappa:.3f} ({interval}), n = {n} SME-labelled items"
        if small_n:
            kappa_text += f"; n={n}: too few to mean anything (fewer than {SMALL_N})"
        accuracy = agreement.get("accuracy")
        accuracy_ci = agreement.get("accuracy_ci")
        accuracy_text = ""
        if accuracy is not None:
            accuracy_text = f"; agreement {accuracy:.3f}" + (
                f" (95 % CI {accuracy_ci[0]:.3f} to {accuracy_ci[1]:.3f})" if accuracy_ci else ""
            )
        confusion = agreement.get("confusion") or {}
        accepts = sum(row.get("judge_accept", 0) for row in confusion.values())
        if accepts:
            right = confusion["sme_accept"]["judge_accept"]
            low, high = wilson_interval(right, accepts)
            accuracy_text += (
                f"; precision of accepts {right / accepts:.3f} (95 % CI {low:.3f} to {high:.3f}, n = {accepts} "
                f"judge accepts)"
            )
        cost_text = _cost_text(cost, int(run.get("tokens") or 0))
        marks.append(
            {
                **run,
                "x": x,
                "n": n,
                "kappa": kappa,
                "small_n": small_n,
                "dot_y": None if kappa is None else ky(kappa),
                "whisker_low": ky(ci[0]) if ci else None,
                "whisker_high": ky(ci[1]) if ci else None,
                "cap_left": round(x - 4, 1),
                "cap_right": round(x + 4, 1),
                "kappa_label": "κ —" if kappa is None else f"κ {kappa:.2f}",
                "n_label": f"n={n}",
                "bar_x": round(x - min(slot * 0.5, 36) / 2, 1),
                "bar_w": round(min(slot * 0.5, 36), 1),
                "bar_y": round(COST_BOTTOM - bar_h, 1),
                "bar_h": bar_h,
                "cost_label_y": round(COST_BOTTOM - bar_h - 3, 1),
                "cost_text": cost_text,
                "cost_label": (f"{cost:.4g}" if cost is not None else "?")
                if cost_kind == "cost"
                else f"{int(run.get('tokens') or 0):,}",
                "text": f"Run {run['id']} ({run['label']}), {run['when']}: {kappa_text}{accuracy_text}; "
                f"cost {cost_text}, {run.get('sent', 0)} items sent",
            }
        )
    step = 0.25 if kappa_domain[1] - kappa_domain[0] <= 1.25 else 0.5
    ticks, value = [], kappa_domain[1]
    while value >= kappa_domain[0] - 1e-9:
        ticks.append({"value": f"{value:g}", "y": ky(value)})
        value = round(value - step, 6)
    return {
        "marks": marks,
        "ticks": ticks,
        "zero_y": ky(0.0) if kappa_domain[0] <= 0 <= kappa_domain[1] else None,
        "width": RUNS_WIDTH,
        "height": COST_BOTTOM + 40,
        "left": RUNS_LEFT,
        "right": RUNS_WIDTH - RUNS_RIGHT,
        "kappa_top": KAPPA_TOP,
        "kappa_bottom": KAPPA_BOTTOM,
        "kappa_middle": (KAPPA_TOP + KAPPA_BOTTOM) / 2,
        "cost_top": COST_TOP,
        "cost_bottom": COST_BOTTOM,
        "cost_kind": cost_kind,
        "small_n": SMALL_N,
        "shown": len(runs),
        "total": total,
    }


def run_cost(run) -> Decimal | None:
    """What a judge run cost (``run.cost``: tokens at the prices it started with), or None when that is
    unknown: an LLM run that used tokens but recorded no prices. The local classifier costs 0."""
    if run.backend == "local":
        return Decimal(0)
    priced = any(float(run.config.get(k, 0) or 0) for k in ("price_in_per_million", "price_out_per_million"))
    if not priced and (run.tokens_in or run.tokens_out):
        return None
    return run.cost
