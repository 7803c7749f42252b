"""Benchmark: is the certified set as good as its certificate says, and is the estimate's interval honest?

Usage (from the project folder; no database or server is needed):

    .venv/bin/python bench/judge_quality.py [--repetitions 200] [--target 0.9] [--delta 0.05] [--jobs 2]
        [--data ../shared/data] [--budgets 0.05 0.1 0.2] [--judges local flipped] [--chart docs/judge_quality.svg]

For each labelled file in ``--data`` (the shared human-labelled sets), each SME budget (the share of items whose
human label the SMEs are given) and each judge, ``--repetitions`` seeded repetitions of what Larry does:

1. Draw a uniform sample of ``budget x N`` items (a recorded uniform draw: its labels are the uniform slice);
   their human labels are the SME labels. Every other item's label is held back, never seen.
2. The judge gives every item a P(accept) and a verdict (accept at P(accept) ≥ 0.5):
   - ``local``: Larry's local classifier (``judging.backends.local_vectorizer``/``local_model``: tf-idf +
     logistic regression) trained on the SME labels, out-of-fold on the labelled items (stratified 5-fold, as
     ``judge_with_local_classifier`` does), and each other item by the model of fold (row number mod k). One
     deviation, for speed: the tf-idf vocabulary and idf are fit once per file on every text (labels play no
     part in them), and each model sees only the columns its training rows use (which changes nothing).
   - ``flipped``: a simulated judge. Each item gets a stated certainty c = 0.5 + 0.5·u, u ~ Beta(a, b) with
     mean 1 - 2·r/m (``--flip-rate`` r, ``--overconfidence`` m, concentration ``--concentration``); its verdict is
     the human label flipped with probability m·(1 - c), so the flip rate is r on average and the judge's error
     is m times what its certainty says: informative (less certain verdicts are wrong more often) but
     overconfident. P(accept) = c for an accept verdict, 1 - c for a reject.
3. Calibration as in the app (``judging.calibration.cross_fit``: Platt below 1,000 labels, isotonic above;
   out-of-fold on the labelled items, the map of fold (row number mod K) on the others). Fewer than 5 labels
   of a class: no calibrated confidence, so neither estimate nor certificate (counted as ``uncalibrated``).
4. Certify (``judging.certify.certify``, Learn-then-Test, the app's code): labels = the uniform sample,
   population = the unlabelled items the judge accepts. Realised precision = the held-back human labels' accept
   share among the certified items. The guarantee holds in a repetition when that precision is at least the
   target, or nothing is certified (no claim made; counted apart as ``nothing_certified``).
5. Estimate (``judging.estimate.ppi_share``, PPI++, the app's code) the share an SME would accept among the
   unlabelled items the judge accepts, from the labelled items the judge accepts; beside it the Wilson interval
   from those labels alone. Coverage: the held-back truth lies in the 95 % interval. Width ratio: PPI++ width
   over Wilson width, in the same repetition (median reported). Fewer than 10 labels in the region, or fewer
   than 5 of either class, give no interval (counted as ``no_interval``), as in the app.

Reported per file x budget x judge, and overall: ``guarantee_held_rate`` (pooled over every repetition and cell;
the guarantee says ≥ 1 - delta in each cell), the lowest cell's rate with its Clopper-Pearson 95 % interval,
``interval_coverage`` (pooled; nominal 0.95), ``width_ratio_vs_classical`` (median), ``certified_share`` (mean
share of all items certified), SME labels used. The last line of output is one JSON object with the figures.
``--chart PATH`` writes an SVG of the guarantee and the certified share per cell (needs matplotlib);
``--replot OUTPUT --chart PATH`` draws it again from a saved run's output.
"""

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import django
import numpy as np
from scipy import sparse
from scipy.stats import binomtest
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "larry_web.settings")
django.setup()  # the app's statistics modules import its models; no database is opened

from judging.backends import local_model, local_vectorizer  # noqa: E402
from judging.calibration import NotEnoughLabels, cross_fit  # noqa: E402
from judging.certify import certify  # noqa: E402
from judging.estimate import MIN_LABELLED, MIN_PER_CLASS, ppi_share, wilson_share  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
JUDGES = ("local", "flipped")


def load(path: Path) -> tuple[list[str], np.ndarray]:
    """``(texts, y)``: each row's prompt, context and response (as the local classifier reads them) and its human
    label (1 accept, 0 reject)."""
    texts, labels = [], []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                texts.append(f"{row['prompt']}\n\n{row['context']}\n\n{row['response']}")
                labels.append(row["human_label"] == "accept")
    return texts, np.array(labels, dtype=int)


def local_judge(features, y: np.ndarray, labelled: np.ndarray, seed: int) -> np.ndarray | None:
    """P(accept) of every item from the local classifier trained on ``labelled``; None below 2 labels a class."""
    y_lab = y[labelled]
    k = min(5, int(y_lab.sum()), int(y_lab.size - y_lab.sum()))
    if k < 2:
        return None
    p = np.empty(y.size)
    x_lab = features[labelled]
    oof = np.empty(labelled.size)
    rest = np.setdiff1d(np.arange(y.size), labelled)
    rest_fold = rest % k  # as the app: fold (item id mod k), the row number standing for the item id
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(labelled, y_lab)
    for fold, (train, test) in enumerate(folds):
        mine = rest[rest_fold == fold]
        both = _fit_predict(x_lab[train], y_lab[train], sparse.vstack([x_lab[test], features[mine]]), seed)
        oof[test], p[mine] = both[: test.size], both[test.size :]
    p[labelled] = oof
    return p


def _fit_predict(x_train, y_train, x_test, seed: int) -> np.ndarray:
    """``local_model`` fit on ``x_train`` and its P(accept) on ``x_test``, on the columns ``x_train`` uses only:
    a feature absent from every training row has zero gradient, so the L2 penalty keeps its weight at 0 and
    leaving it out changes nothing but the time (lbfgs over ~100,000 columns is most of it)."""
    used = np.unique(x_train.indices)
    return local_model(seed).fit(x_train[:, used], y_train).predict_proba(x_test[:, used])[:, 1]


def flipped_judge(y: np.ndarray, rng: np.random.Generator, args) -> np.ndarray:
    """P(accept) of a simulated judge that flips the human label at ``args.flip_rate`` on average, overconfident
    by ``args.overconfidence`` (module docstring)."""
    mean_u = 1 - 2 * args.flip_rate / args.overconfidence
    if not 0 < mean_u < 1:
        raise ValueError("--flip-rate / --overconfidence must lie in (0, 0.5)")
    u = rng.beta(mean_u * args.concentration, (1 - mean_u) * args.concentration, size=y.size)
    c = 0.5 + 0.5 * u
    flip = rng.random(y.size) < np.minimum(1.0, args.overconfidence * (1 - c))
    verdict = np.where(flip, 1 - y, y)
    return np.where(verdict == 1, c, 1 - c)


def one_repetition(y: np.ndarray, features, judge: str, budget: float, seed: tuple, args) -> dict:
    """One seeded repetition (module docstring, steps 1-5): a dict of what happened."""
    rng = np.random.default_rng(seed)
    n = y.size
    labelled = np.sort(rng.choice(n, size=max(1, round(budget * n)), replace=False))
    unlabelled = np.setdiff1d(np.arange(n), labelled)
    out = {"labels": int(labelled.size), "items": n}
    raw = local_judge(features, y, labelled, seed[-1]) if judge == "local" else flipped_judge(y, rng, args)
    if raw is None:
        return out | {"uncalibrated": True}
    try:
        fit = cross_fit(raw[labelled], y[labelled], raw[unlabelled], seed=seed[-1], unlabelled_keys=unlabelled)
    except NotEnoughLabels:
        return out | {"uncalibrated": True}
    p = np.empty(n)
    p[labelled], p[unlabelled] = fit.labelled, fit.unlabelled
    accepts = raw >= 0.5
    population = unlabelled[accepts[unlabelled]]
    cert = certify(p[labelled], y[labelled] == 1, target=args.target, delta=args.delta, population=p[population])
    out |= {"certified": cert.certified, "threshold": cert.threshold}
    if cert.threshold is not None:
        chosen = population[p[population] >= cert.threshold]
        out["precision"] = float(y[chosen].mean()) if chosen.size else None
    region = labelled[accepts[labelled]]
    y_region = y[region]
    fewer = min(int(y_region.sum()), int(region.size - y_region.sum()))
    if population.size and region.size >= MIN_LABELLED and fewer >= MIN_PER_CLASS:
        truth = float(y[population].mean())
        ppi = ppi_share(y_region, p[region], p[population])
        wilson = wilson_share(int(y_region.sum()), int(region.size))
        out["covered"] = ppi["low"] <= truth <= ppi["high"]
        out["classical_covered"] = wilson["low"] <= truth <= wilson["high"]
        out["width_ratio"] = (ppi["high"] - ppi["low"]) / (wilson["high"] - wilson["low"])
    return out


def run_cell(task: tuple) -> dict:
    """Every repetition of one file x budget x judge: the cell's summary (``summarise``)."""
    path, file_index, budget, judge, args = task
    texts, y = load(Path(path))
    features = local_vectorizer().fit_transform(texts) if judge == "local" else None
    reps = [
        one_repetition(
            y, features, judge, budget, (args.seed, file_index, round(budget * 1000), JUDGES.index(judge), r), args
        )
        for r in range(args.repetitions)
    ]
    return {"file": Path(path).name, "budget": budget, "judge": judge, "reps": reps, **summarise(reps, args.target)}


def summarise(reps: list[dict], target: float) -> dict:
    """A cell's figures: guarantee held (rate, Clopper-Pearson 95 % interval), coverage, widths, shares."""
    held = [r.get("precision") is None or r["precision"] >= target for r in reps]
    certified = [r for r in reps if r.get("threshold") is not None]
    covered = [r["covered"] for r in reps if "covered" in r]
    held_ci = binomtest(sum(held), len(held)).proportion_ci(method="exact")
    return {
        "repetitions": len(reps),
        "guarantee_held_rate": sum(held) / len(held),
        "guarantee_held_ci": [float(held_ci.low), float(held_ci.high)],
        "guarantee_failed": len(held) - sum(held),
        "something_certified": len(certified),
        "nothing_certified": sum(1 for r in reps if "certified" in r and r.get("threshold") is None),
        "uncalibrated": sum(1 for r in reps if r.get("uncalibrated")),
        "certified_share": float(np.mean([r.get("certified", 0) / r["items"] for r in reps])),
        "mean_precision_when_certified": (
            float(np.mean([r["precision"] for r in certified if r["precision"] is not None])) if certified else None
        ),
        "interval_coverage": float(np.mean(covered)) if covered else None,
        "classical_coverage": (
            float(np.mean([r["classical_covered"] for r in reps if "covered" in r])) if covered else None
        ),
        "no_interval": len(reps) - len(covered),
        "width_ratio_vs_classical": (
            float(np.median([r["width_ratio"] for r in reps if "width_ratio" in r])) if covered else None
        ),
        "sme_labels": reps[0]["labels"],
        "items": reps[0]["items"],
    }


def chart(cells: list[dict], path: Path, target: float, delta: float) -> None:
    """An SVG: per cell, the share of repetitions where the guarantee held (against 1 - delta), the share of
    items certified, and how often each 95 % interval covered the realised share."""
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text as text: a small file, readable in a diff
    plt.rcParams["svg.hashsalt"] = "larry"  # stable ids, so a re-run with the same figures gives the same file

    fig, axes = plt.subplots(3, 1, figsize=(11, 9.5), sharex=True)
    labels = [f"{c['file'].split('.')[0]}\n{c['judge']} {c['budget']:.0%}" for c in cells]
    x = np.arange(len(cells))
    held = [c["guarantee_held_rate"] for c in cells]
    err = np.array(
        [[h - c["guarantee_held_ci"][0], c["guarantee_held_ci"][1] - h] for h, c in zip(held, cells, strict=True)]
    ).T
    axes[0].bar(x, held, yerr=err, color="#4477aa", capsize=2)
    axes[0].axhline(1 - delta, color="#cc3311", linestyle="--", label=f"guarantee: 1 - δ = {1 - delta:.2f}")
    axes[0].set_ylim(min(0.8, min(held) - 0.02), 1.005)
    axes[0].set_ylabel("guarantee held\n(share of repetitions)")
    axes[0].legend(loc="lower right")
    axes[0].set_title(f"Certified set: precision ≥ {target:g} with confidence {1 - delta:g} (Learn-then-Test)")
    axes[1].bar(x, [c["certified_share"] for c in cells], color="#228833")
    axes[1].set_ylabel("share of items\ncertified (mean)")
    for offset, key, name, colour in (
        (-0.2, "interval_coverage", "PPI++", "#4477aa"),
        (0.2, "classical_coverage", "Wilson", "#bbbbbb"),
    ):
        axes[2].bar(x + offset, [c[key] or 0 for c in cells], width=0.4, color=colour, label=name)
    axes[2].axhline(0.95, color="#cc3311", linestyle="--", label="nominal 0.95")
    axes[2].set_ylim(0.5, 1.005)
    axes[2].set_ylabel("95 % interval covers\nthe realised share")
    axes[2].legend(loc="lower right", ncols=3)
    axes[2].set_xticks(x, labels, rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.10, 0.20])
    parser.add_argument("--judges", nargs="+", choices=JUDGES, default=list(JUDGES))
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--flip-rate", type=float, default=0.15)
    parser.add_argument("--overconfidence", type=float, default=2.0)
    parser.add_argument("--concentration", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--files", nargs="+", help="only these file names in --data")
    parser.add_argument("--chart", type=Path, help="write an SVG chart here (needs matplotlib)")
    parser.add_argument("--replot", type=Path, help="only draw --chart from a saved run's output (its last line)")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads(args.replot.read_text().strip().splitlines()[-1])
        chart(saved["cells"], args.chart or Path("judge_quality.svg"), saved["target"], saved["delta"])
        return
    files = sorted(p for p in args.data.glob("*.jsonl") if not args.files or p.name in args.files)
    if not files:
        sys.exit(f"no labelled .jsonl files in {args.data}")
    tasks = [
        (str(path), index, budget, judge, args)
        for index, path in enumerate(files)
        for budget in args.budgets
        for judge in args.judges
    ]
    cells = []
    # One BLAS/OpenMP thread per process: with a thread per core in each of several processes on a busy machine,
    # lbfgs's small vector operations spin-wait for each other (measured: 24x slower).
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=threadpool_limits, initargs=(1,)) as pool:
        for done, cell in enumerate(pool.map(run_cell, tasks), 1):
            reps = cell.pop("reps")
            cells.append(cell)
            print(
                f"[{done}/{len(tasks)}] {cell['file']} {cell['judge']} budget {cell['budget']:.0%} "
                f"({cell['sme_labels']} SME labels of {cell['items']}): guarantee held "
                f"{cell['guarantee_held_rate']:.3f} ({cell['guarantee_failed']} failed, "
                f"{cell['something_certified']} certified something), certified share "
                f"{cell['certified_share']:.3f}, coverage {_fmt(cell['interval_coverage'])} "
                f"(Wilson {_fmt(cell['classical_coverage'])}), width ratio {_fmt(cell['width_ratio_vs_classical'])}",
                file=sys.stderr,
                flush=True,
            )
            cell["all_reps"] = reps
    pooled = summarise([r for c in cells for r in c.pop("all_reps")], args.target)
    worst = min(cells, key=lambda c: c["guarantee_held_rate"])
    if args.chart:
        chart(cells, args.chart, args.target, args.delta)
    result = {
        "target": args.target,
        "delta": args.delta,
        "repetitions": args.repetitions,
        "guarantee_held_rate": pooled["guarantee_held_rate"],
        "lowest_cell_guarantee_held_rate": worst["guarantee_held_rate"],
        "lowest_cell": f"{worst['file']} {worst['judge']} {worst['budget']:.0%}",
        "cells_below_1_minus_delta": sum(c["guarantee_held_rate"] < 1 - args.delta for c in cells),
        "interval_coverage": pooled["interval_coverage"],
        "width_ratio_vs_classical": pooled["width_ratio_vs_classical"],
        "certified_share": pooled["certified_share"],
        "flipped_judge": {
            "flip_rate": args.flip_rate,
            "overconfidence": args.overconfidence,
            "concentration": args.concentration,
        },
        "cells": cells,
    }
    print(json.dumps(result))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
