"""Benchmark: does a two-tier cascade keep each tier's agreement with the SMEs at the target?

Usage (from the project folder; no database or server is needed):

    .venv/bin/python bench/cascade_quality.py [--repetitions 200] [--target 0.9] [--risk 0.1]

A seeded simulation of the cascade of issue 12: a small judge (Baby Larry)
sees every item, a big judge sees only the items the small one escalates, the
SMEs get what neither decides. Each repetition draws ``--items`` items; for
each item and judge a certainty c = max(p, 1 - p) in [0.5, 1] (from a Beta
distribution whose mean gives the judge's ``--small-error`` or
``--big-error``; the two judges' certainties are correlated through a
Gaussian copula, ``--correlation``, because an item hard for one is often
hard for the other) and whether the judge's verdict agrees with the SME
label, drawn with probability 0.5 + (c - 0.5) * (1 - ``--overconfidence``):
calibrated-ish, each judge somewhat over-confident. A uniform random
``--labelled`` share of the items has an SME label.

Tier 1's threshold is chosen with ``judging.thresholds.choose_threshold`` on
all labelled items; tier 2's on the labelled items that tier 1 escalates.
Then each tier's true agreement with the SMEs is measured on the unlabelled
items it decides, the thing the guarantee is about. A tier that decides
nothing counts as holding (it made no error) and is counted apart.

Reported per tier: the share of repetitions whose agreement was at least the
target (the guarantee says at least 1 - risk), with its Clopper-Pearson 95 %
interval; the mean and the 5th percentile of that agreement; coverage (share
of all items it decided); the mean threshold; and the cascade's token cost
against sending every item to the big judge, from ``--tokens-in``,
``--tokens-out`` per call and the prices per million tokens. The last line
of output is one JSON object with the figures.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import beta, binomtest, norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from judging.thresholds import choose_threshold


def beta_params(error: float, concentration: float) -> tuple[float, float]:
    """Beta(a, b) for (c - 0.5) / 0.5 whose mean makes the calibrated agreement 1 - ``error``."""
    mean = (0.5 - error) / 0.5
    return mean * concentration, (1 - mean) * concentration


def one_repetition(rng: np.random.Generator, args) -> dict:
    n = args.items
    z = rng.standard_normal(n)
    rho = args.correlation
    u_small = norm.cdf(rho * z + np.sqrt(1 - rho**2) * rng.standard_normal(n))
    u_big = norm.cdf(rho * z + np.sqrt(1 - rho**2) * rng.standard_normal(n))
    c_small = 0.5 + 0.5 * beta.ppf(u_small, *beta_params(args.small_error, args.concentration))
    c_big = 0.5 + 0.5 * beta.ppf(u_big, *beta_params(args.big_error, args.concentration))
    shrink = 1 - args.overconfidence
    q_small = 0.5 + (c_small - 0.5) * shrink  # the chance that the verdict agrees with the SMEs
    q_big = 0.5 + (c_big - 0.5) * shrink
    agree_small = rng.uniform(size=n) < q_small
    agree_big = rng.uniform(size=n) < q_big
    labelled = np.zeros(n, dtype=bool)
    labelled[rng.choice(n, size=round(args.labelled * n), replace=False)] = True

    t1 = choose_threshold(
        c_small[labelled], agree_small[labelled], target=args.target, risk=args.risk, min_items=args.min_items
    )
    decided1 = c_small >= t1.threshold if t1.decides else np.zeros(n, dtype=bool)
    escalated = ~decided1
    reach2 = escalated & labelled
    t2 = choose_threshold(
        c_big[reach2], agree_big[reach2], target=args.target, risk=args.risk, min_items=args.min_items
    )
    decided2 = escalated & (c_big >= t2.threshold) if t2.decides else np.zeros(n, dtype=bool)

    out = {"escalated": int(escalated.sum()), "n": n}
    for name, choice, decided, agree, q in (
        ("small", t1, decided1, agree_small, q_small),
        ("big", t2, decided2, agree_big, q_big),
    ):
        on = decided & ~labelled
        out[name] = {
            "threshold": choice.threshold,
            "decided": int(decided.sum()),
            "unlabelled_decided": int(on.sum()),
            "agreement": float(agree[on].mean()) if on.any() else None,
            "expected": float(q[on].mean()) if on.any() else None,
        }
    out["sme"] = int((escalated & ~decided2).sum())
    return out


def summarise(reps: list[dict], args) -> dict:
    n_reps, n_items = len(reps), args.items
    per_call = {
        "small": (args.tokens_in * args.small_price_in + args.tokens_out * args.small_price_out) / 1e6,
        "big": (args.tokens_in * args.big_price_in + args.tokens_out * args.big_price_out) / 1e6,
    }
    tiers = {}
    for name in ("small", "big"):
        rows = [r[name] for r in reps]
        agreements = np.array([r["agreement"] for r in rows if r["agreement"] is not None])
        held = sum(1 for r in rows if r["expected"] is None or r["expected"] >= args.target)
        held_realised = sum(1 for r in rows if r["agreement"] is None or r["agreement"] >= args.target)
        ci = binomtest(held, n_reps).proportion_ci(method="exact")
        thresholds = [r["threshold"] for r in rows if r["threshold"] is not None]
        tiers[name] = {
            "held_share": held / n_reps,
            "held_ci95": [round(ci.low, 3), round(ci.high, 3)],
            "held_share_realised": held_realised / n_reps,
            "decided_nothing_reps": sum(1 for r in rows if r["threshold"] is None),
            "agreement_mean": round(float(agreements.mean()), 4) if agreements.size else None,
            "agreement_p5": round(float(np.percentile(agreements, 5)), 4) if agreements.size else None,
            "coverage": round(sum(r["decided"] for r in rows) / (n_reps * n_items), 4),
            "threshold_mean": round(float(np.mean(thresholds)), 4) if thresholds else None,
        }
    tiers["sme"] = {"coverage": round(sum(r["sme"] for r in reps) / (n_reps * n_items), 4)}
    cascade_cost = np.mean([n_items * per_call["small"] + r["escalated"] * per_call["big"] for r in reps])
    big_only = n_items * per_call["big"]
    return {
        "repetitions": n_reps,
        "items": n_items,
        "labelled": args.labelled,
        "target": args.target,
        "risk": args.risk,
        "small_error": args.small_error,
        "big_error": args.big_error,
        "overconfidence": args.overconfidence,
        "tiers": tiers,
        "cost_cascade_usd": round(float(cascade_cost), 4),
        "cost_big_only_usd": round(big_only, 4),
        "cost_ratio": round(float(cascade_cost / big_only), 4),
        "guarantee_holds": all(tiers[t]["held_share"] >= 1 - args.risk for t in ("small", "big")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--labelled", type=float, default=0.1, help="share of items with an SME label")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--risk", type=float, default=0.1)
    parser.add_argument(
        "--small-error", type=float, default=0.2, help="calibrated disagreement rate of the small judge"
    )
    parser.add_argument("--big-error", type=float, default=0.08)
    parser.add_argument("--overconfidence", type=float, default=0.05, help="0: calibrated; 0.05: 5 %% over-confident")
    parser.add_argument("--correlation", type=float, default=0.5)
    parser.add_argument("--concentration", type=float, default=2.0, help="Beta a + b: lower spreads certainty more")
    parser.add_argument("--min-items", type=int, default=0)
    parser.add_argument("--tokens-in", type=int, default=800)
    parser.add_argument("--tokens-out", type=int, default=60)
    parser.add_argument("--small-price-in", type=float, default=0.05, help="USD per million tokens")
    parser.add_argument("--small-price-out", type=float, default=0.08)
    parser.add_argument("--big-price-in", type=float, default=3.0)
    parser.add_argument("--big-price-out", type=float, default=3.0)
    args = parser.parse_args()

    reps = [one_repetition(np.random.default_rng([args.seed, i]), args) for i in range(args.repetitions)]
    result = summarise(reps, args)
    print(f"{args.repetitions} repetitions of {args.items} items, {args.labelled:.0%} SME-labelled; ", end="")
    print(f"target {args.target:.0%}, risk {args.risk:.0%}")
    print(
        f"{'tier':<6} {'held':>6} {'95% CI':>14} {'real.':>6} {'none':>5} "
        f"{'agree':>7} {'p5':>7} {'cover':>7} {'λ mean':>7}"
    )
    for name in ("small", "big"):
        t = result["tiers"][name]
        print(
            f"{name:<6} {t['held_share']:>6.3f} {t['held_ci95']!s:>14} {t['held_share_realised']:>6.3f} "
            f"{t['decided_nothing_reps']:>5} "
            f"{t['agreement_mean'] or 0:>7.4f} {t['agreement_p5'] or 0:>7.4f} {t['coverage']:>7.4f} "
            f"{t['threshold_mean'] or 0:>7.4f}"
        )
    print(f"{'sme':<6} {'':>6} {'':>14} {'':>6} {'':>5} {'':>7} {'':>7} {result['tiers']['sme']['coverage']:>7.4f}")
    print(
        f"cost per repetition: cascade ${result['cost_cascade_usd']:.2f} against big judge only "
        f"${result['cost_big_only_usd']:.2f} ({result['cost_ratio']:.0%})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
