"""How much do operating points chosen on validation images keep on images they were not chosen on?

For each run, the validation split's images are predicted once and cut into two halves that match in
salt coverage (sorted by coverage, alternately assigned). Each criterion chooses its threshold, min area
and smallest component on one half (`evaluation/operating_points.py`, the search `evaluate --choose`
runs) and is scored on the other, both ways round; the run's own decoding (its threshold and
eval.min_area) is scored on the same halves. Prints markdown: per criterion, the chosen rules and the
held-out precision, recall, F1 and TGS metric (mean ± sd over runs and both halves), and the optimism
(in-sample score minus held-out score) of reading the chosen point on the images that chose it.

    python benchmarks/operating_points_holdout.py studies/q51-downsampling/cells/maxpool/seed-{0,1,2} \
        --data ../shared/data/tgs-salt
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from unetlab.data.formats.registry import load_for_config
from unetlab.data.splits import load_split
from unetlab.errors import UnetlabError
from unetlab.evaluation.operating_points import OperatingPointSearch, parse_criteria
from unetlab.inference.predictor import Predictor
from unetlab.run_folder import RunFolder

CRITERIA = ["max-tgs", "max-f1", "max-iou", "max-fbeta:2", "precision@recall>=0.9", "recall@precision>=0.95"]
KEYS = ("precision", "recall", "dice", "tgs_map")


def halves(coverage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of two coverage-matched halves: sorted by coverage, alternately assigned."""
    order = np.argsort(coverage, kind="stable")
    return np.sort(order[0::2]), np.sort(order[1::2])


def run_halves(run: str, data: str) -> tuple[Predictor, list[tuple[OperatingPointSearch, OperatingPointSearch]]]:
    """The run's predictor and (choose-on, score-on) searches for both halves of its validation split."""
    predictor = Predictor.load(run)
    dataset = load_for_config(predictor.config, data)
    _, val = load_split(RunFolder(run).split_path, dataset.ids)
    probs = torch.from_numpy(np.stack(predictor.predict_proba([dataset.images[i] for i in val])))
    truth = torch.from_numpy(dataset.masks[val])
    valid = None if dataset.valid is None else torch.from_numpy(dataset.valid[val])
    a, b = halves(dataset.masks[val].mean(axis=(1, 2)))

    def search(part: np.ndarray) -> OperatingPointSearch:
        index = torch.from_numpy(part)
        return OperatingPointSearch(probs[index], truth[index], None if valid is None else valid[index])

    first, second = search(a), search(b)
    return predictor, [(first, second), (second, first)]


def score(search: OperatingPointSearch, threshold: float, min_area: int, min_component: int) -> dict[str, float]:
    values = search.scores_at([threshold], min_area, min_component)
    return {key: float(values[key][0]) for key in KEYS}


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else float('nan'):.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--choose", action="append", help=f"criteria (default: {', '.join(CRITERIA)})")
    args = parser.parse_args()
    try:
        criteria = parse_criteria(args.choose or CRITERIA)
        rows: dict[str, dict[str, list]] = {}
        for run in args.runs:
            predictor, pairs = run_halves(run, args.data)
            default = (predictor.threshold, predictor.min_area, predictor.min_component)
            for choose_on, score_on in pairs:
                held = rows.setdefault(f"run's own ({default[0]:g}, area {default[1]}, component {default[2]})", {})
                for key, value in score(score_on, *default).items():
                    held.setdefault(key, []).append(value)
                for point in choose_on.choose(criteria):
                    row = rows.setdefault(point.criterion, {})
                    if point.unreachable:
                        row.setdefault("unreachable", []).append(point.unreachable)
                        continue
                    rule = (point.threshold, point.min_area, point.min_component)
                    row.setdefault("rules", []).append(rule)
                    for key, value in score(score_on, *rule).items():
                        row.setdefault(key, []).append(value)
                    row.setdefault("optimism", []).append(point.metrics["tgs_map"] - score(score_on, *rule)["tgs_map"])
    except UnetlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(args.runs)} run(s) x 2 halves; chosen on one half, scored on the other (mean ± sd)\n")
    print("| decoding | thresholds chosen | min area | min component | precision | recall | F1 | TGS | "
          "TGS optimism (chosen-on minus held-out) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        if "precision" not in row:
            print(f"| {name} | unreachable: {row['unreachable'][0]} |||||||")
            continue
        rules = row.get("rules")
        chosen = (f"{min(r[0] for r in rules):.3f} – {max(r[0] for r in rules):.3f}",
                  "/".join(sorted({str(r[1]) for r in rules})), "/".join(sorted({str(r[2]) for r in rules}))
                  ) if rules else ("-", "-", "-")
        optimism = _mean_sd(row["optimism"]) if "optimism" in row else "-"
        print(f"| {name} | {chosen[0]} | {chosen[1]} | {chosen[2]} | " +
              " | ".join(_mean_sd(row[key]) for key in KEYS) + f" | {optimism} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
