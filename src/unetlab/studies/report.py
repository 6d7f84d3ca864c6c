"""A study's report: `build_report(spec, study_dir)` writes `<study_dir>/report/`.

    report/report.md          per variant (finished cells only) mean ± sd over seeds of the study metric and
                              the other scores, cost, the paired difference against the baseline with a 95 %
                              bootstrap interval, the figures below and (with `analysis: threshold`) the
                              threshold analysis of the baseline
    report/cells.csv          one row per finished cell: every metric, best epoch, time, images/s, cost
    report/summary.json       everything in the tables, the intervals, per-variant per-image mean scores
    report/curves.png         the study metric and validation loss against the epoch, one line per variant
    report/predictions.png    the same validation images predicted by every variant's first-seed cell
    report/threshold.png, report/precision-recall.png    threshold analysis only

A cell is `<study_dir>/cells/<variant>/seed-<seed>/`, a run folder; it is finished once its best checkpoint has
been scored on the study's validation split (`evaluation/best-val.json`, with per-image scores).

The spec is read duck-typed: `name`, `description`, `variants` (name -> overrides), `seeds`, `baseline` (None:
the first variant), `metric` (None: val/tgs_map for binary, val/miou for multiclass) and optionally `analysis`.

The bootstrap (`paired_bootstrap`): variant and baseline are paired on the same seed and on the same image ids.
Each of `RESAMPLES` resamples draws the validation images with replacement (one draw shared by every seed and by
both sides) and the paired seeds with replacement, recomputes the metric of each drawn cell from its per-image
counts on the drawn images (a mean of per-image scores for the TGS metric, summed counts or confusion matrices
for IoU-like metrics), and averages the variant-minus-baseline differences over the drawn seeds. The interval is
the 2.5 and 97.5 percentiles of those averages (percentile method, numpy's default linear interpolation).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from unetlab.data.formats.registry import load_for_config
from unetlab.errors import UnetlabError
from unetlab.evaluation.evaluate import figure_indices
from unetlab.files import atomic_write_text, csv_text
from unetlab.inference.predictor import Predictor
from unetlab.metrics import image_iou, micro_scores, multiclass_scores, tgs_image_scores
from unetlab.models import create_model
from unetlab.models.summary import count_flops, count_parameters, format_count, format_gflops
from unetlab.run_folder import RunFolder
from unetlab.studies.sharing import shared_from
from unetlab.viz import save_band_curves, save_pr_curves, save_variant_predictions

RESAMPLES = 2000
RNG_SEED = 0
NO_DIFFERENCE = "no measurable difference at this budget"
EVALUATION = "best-val"  # the evaluation every cell gets after training
FIGURE_IMAGES = 6
BINARY_KEYS = ("tgs_map", "iou", "dice", "precision", "recall")
MULTICLASS_KEYS = ("miou", "pixel_accuracy")
_PER_IMAGE_KEYS = ("tgs_map", "mean_image_iou")  # means of per-image scores; the other binary keys are micro
_BINARY_MICRO = ("pixel_accuracy", "iou", "dice", "precision", "recall")
_MULTICLASS_ALL = ("miou", "pixel_accuracy", "mean_accuracy", "mean_dice", "fw_iou")
_NAMES = {"tgs_map": "TGS metric", "iou": "IoU", "dice": "Dice", "precision": "precision", "recall": "recall",
          "miou": "mIoU", "pixel_accuracy": "pixel accuracy", "mean_image_iou": "mean image IoU",
          "val_loss": "val loss"}


# --------------------------------------------------------------------------- cells


@dataclass
class Cell:
    """One finished cell: its evaluation JSON and its metrics.csv rows."""

    variant: str
    seed: int
    path: Path
    evaluation: dict
    rows: list[dict] = field(default_factory=list)
    shared_from: dict | None = None  # the other study's cell it was copied from (studies/sharing.py)

    @property
    def task(self) -> str:
        return self.evaluation.get("task", "binary")


def cell_dir(study_dir: str | Path, variant: str, seed: int) -> Path:
    return Path(study_dir) / "cells" / variant / f"seed-{seed}"


def load_cells(spec: Any, study_dir: Path) -> tuple[dict[str, list[Cell]], list[str]]:
    """Finished cells per variant (in the spec's seed order) and the labels `variant/seed-N` of the others."""
    cells: dict[str, list[Cell]] = {}
    missing = []
    for variant in spec.variants:
        cells[variant] = []
        for seed in spec.seeds:
            folder = RunFolder(cell_dir(study_dir, variant, seed))
            path = folder.evaluation_path(EVALUATION)
            if not path.is_file():
                missing.append(f"{variant}/seed-{seed}")
                continue
            cells[variant].append(Cell(variant, int(seed), folder.path, json.loads(path.read_text()),
                                       folder.read_metrics(), shared_from(folder)))
    return cells, missing


def study_metric(spec: Any, task: str) -> str:
    """The metric key of the evaluation JSON (`val/tgs_map` -> `tgs_map`)."""
    metric = getattr(spec, "metric", None) or ("val/tgs_map" if task == "binary" else "val/miou")
    return metric[len("val/"):] if metric.startswith("val/") else metric


def model_cost(run: Path) -> dict[str, float]:
    """Parameters and GFLOPs per image (at data.input_size) of a cell's model, from its config."""
    config = RunFolder(run).read_config()
    options = config.model.options()
    if "encoder_weights" in options:
        options["encoder_weights"] = None  # the architecture is all we need: never download weights
    model = create_model(config.model.name, **options)
    size = config.data.input_size
    return {"params": count_parameters(model), "gflops": count_flops(model, config.model.in_channels, size, size),
            "input_size": size}


def cell_record(cell: Cell, cost: dict[str, float]) -> dict[str, Any]:
    """One row of cells.csv: the evaluation's metrics, loss at the best epoch, timing and cost."""
    best = cell.evaluation.get("epoch")
    row = next((r for r in cell.rows if r.get("epoch") == best), {})
    speeds = [r["train/images_per_s"] for r in cell.rows if math.isfinite(r.get("train/images_per_s", math.nan))]
    return {"variant": cell.variant, "seed": cell.seed, **cell.evaluation["metrics"],
            "val_loss": row.get("val/loss", math.nan), "best_epoch": best,
            "epochs": cell.rows[-1]["epoch"] if cell.rows else math.nan,
            "time_s": cell.rows[-1].get("time_s", math.nan) if cell.rows else math.nan,
            "images_per_s": float(np.mean(speeds)) if speeds else math.nan,
            "params": cost["params"], "gflops": cost["gflops"]}


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; NaN for one value) of the finite values."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    mean = float(v.mean()) if v.size else math.nan
    sd = float(v.std(ddof=1)) if v.size >= 2 else math.nan
    return {"mean": mean, "sd": sd, "values": [float(x) if x is not None else math.nan for x in values]}


# --------------------------------------------------------------------------- per-image counts and bootstrap


def per_image_counts(evaluation: dict) -> tuple[list[str], np.ndarray]:
    """Image ids and their counts: binary int64 (N, 4) [tp, fp, fn, tn], multiclass int64 (N, C, C)."""
    per = evaluation.get("per_image")
    if per is None:
        raise UnetlabError(f"{evaluation.get('run')}: its evaluation has no per-image scores; run "
                           "`unetlab evaluate` on it again")
    if evaluation.get("task") == "multiclass":
        return list(per["ids"]), np.asarray(per["confusion"], dtype=np.int64)
    return list(per["ids"]), np.stack([np.asarray(per[k], dtype=np.int64) for k in ("tp", "fp", "fn", "tn")], 1)


def metric_function(task: str, key: str, class_names: Sequence[str] | None = None
                    ) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """f(counts, weights (R, N)) -> (R,) the metric of each weighting of the images (weights = multiplicities
    of a resample); None when the metric cannot be recomputed from per-image counts."""
    if task == "multiclass":
        def multiclass(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
            c = counts.shape[-1]
            totals = np.rint(weights @ counts.reshape(len(counts), -1).astype(np.float64)).astype(np.int64)
            return np.array([multiclass_scores(torch.from_numpy(t.reshape(c, c)), class_names).get(key, math.nan)
                             for t in totals])
        return multiclass if key in _MULTICLASS_ALL or key.startswith("iou/") else None
    if key in _PER_IMAGE_KEYS:
        score = tgs_image_scores if key == "tgs_map" else image_iou

        def per_image_mean(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
            per = score(torch.from_numpy(counts), torch.float64).numpy()
            return (weights @ per) / weights.sum(axis=1)
        return per_image_mean
    if key in _BINARY_MICRO:
        def micro(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
            totals = np.rint(weights @ counts.astype(np.float64)).astype(np.int64)
            return micro_scores(torch.from_numpy(totals))[key].numpy()
        return micro
    return None


def resample_weights(rng: np.random.Generator, n_images: int, resamples: int) -> np.ndarray:
    """(R, N) float64: how often each image is drawn in each resample (N draws with replacement)."""
    draws = rng.integers(0, n_images, size=(resamples, n_images))
    weights = np.zeros((resamples, n_images), dtype=np.float64)
    np.add.at(weights, (np.repeat(np.arange(resamples), n_images), draws.ravel()), 1.0)
    return weights


def paired_bootstrap(variant: Sequence[np.ndarray], baseline: Sequence[np.ndarray],
                     metric: Callable[[np.ndarray, np.ndarray], np.ndarray], resamples: int = RESAMPLES,
                     seed: int = RNG_SEED) -> dict[str, Any]:
    """Difference variant - baseline of `metric` and its 95 % bootstrap interval over images and seeds.

    `variant[s]`, `baseline[s]`: per-image counts of paired seed s, rows aligned on the same image ids."""
    if len(variant) != len(baseline) or not variant:
        raise ValueError(f"need the same positive number of seeds on both sides, got {len(variant)} and "
                         f"{len(baseline)}")
    n_images = len(variant[0])
    ones = np.ones((1, n_images))
    observed = float(np.mean([metric(v, ones)[0] - metric(b, ones)[0] for v, b in zip(variant, baseline)]))
    rng = np.random.default_rng(seed)
    weights = resample_weights(rng, n_images, resamples)
    seeds = rng.integers(0, len(variant), size=(resamples, len(variant)))
    diffs = np.stack([metric(v, weights) - metric(b, weights) for v, b in zip(variant, baseline)], axis=1)
    boot = np.take_along_axis(diffs, seeds, axis=1).mean(axis=1)
    finite = boot[np.isfinite(boot)]
    low, high = (float(x) for x in np.percentile(finite, [2.5, 97.5])) if finite.size else (math.nan, math.nan)
    return {"difference": observed, "ci95": [low, high], "resamples": resamples, "rng_seed": seed,
            "undefined_resamples": int(boot.size - finite.size)}


def compare(cells: Sequence[Cell], baseline: Sequence[Cell], key: str) -> dict[str, Any]:
    """The paired bootstrap of a variant's cells against the baseline's, on shared seeds and image ids."""
    by_seed = {c.seed: c for c in baseline}
    pairs = [(c, by_seed[c.seed]) for c in cells if c.seed in by_seed]
    if not pairs:
        return {"difference": None, "ci95": None, "seeds": [], "note": "no seed is finished on both sides"}
    seeds = [c.seed for c, _ in pairs]
    metric = metric_function(pairs[0][0].task, key, pairs[0][0].evaluation.get("class_names"))
    if metric is None:
        return {"difference": None, "ci95": None, "seeds": seeds, "note": f"{key} is not recomputable per image"}
    loaded = [per_image_counts(cell.evaluation) for pair in pairs for cell in pair]
    id_sets = [set(ids) for ids, _ in loaded]
    common = [i for i in loaded[1][0] if all(i in ids for ids in id_sets)]  # in the baseline's order
    if not common:
        return {"difference": None, "ci95": None, "seeds": seeds, "note": "no image is shared"}
    aligned = []
    for ids, counts in loaded:
        at = {i: k for k, i in enumerate(ids)}
        aligned.append(counts[[at[i] for i in common]])
    result = paired_bootstrap(aligned[0::2], aligned[1::2], metric)
    return {**result, "seeds": seeds, "images": len(common)}


def verdict(variant: str, baseline: str, comparison: dict[str, Any], label: str) -> str:
    """One plain sentence about a comparison."""
    if comparison.get("ci95") is None:
        return f"{variant} vs {baseline}: not compared ({comparison.get('note', 'no data')})."
    low, high = comparison["ci95"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{variant} vs {baseline}: the interval is undefined."
    if low <= 0.0 <= high:
        return (f"{variant} vs {baseline}: {NO_DIFFERENCE} (the 95 % interval of the {label} difference "
                f"[{low:+.4f}, {high:+.4f}] contains 0).")
    word = "better" if low > 0 else "worse"
    return (f"{variant} is {word} than {baseline} on the {label} by {comparison['difference']:+.4f} "
            f"(95 % interval [{low:+.4f}, {high:+.4f}]).")


def per_image_means(cells: Sequence[Cell]) -> dict[str, list]:
    """Mean over a variant's seeds of each image's scores (binary: TGS score and IoU; multiclass: mIoU and pixel
    accuracy of the image alone), on the image ids of its first cell."""
    if not cells:
        return {}
    ids = per_image_counts(cells[0].evaluation)[0]
    sums: dict[str, np.ndarray] = {}
    for cell in cells:
        cell_ids, counts = per_image_counts(cell.evaluation)
        at = {i: k for k, i in enumerate(cell_ids)}
        counts = counts[[at[i] for i in ids]]
        for name, values in _image_scores(cell.task, counts).items():
            sums[name] = sums.get(name, 0.0) + values
    return {"ids": ids, **{name: (total / len(cells)).tolist() for name, total in sums.items()}}


def _image_scores(task: str, counts: np.ndarray) -> dict[str, np.ndarray]:
    if task == "multiclass":
        scores = [multiclass_scores(torch.from_numpy(c)) for c in counts]
        return {k: np.array([s[k] for s in scores]) for k in MULTICLASS_KEYS}
    c = torch.from_numpy(counts)
    return {"tgs": tgs_image_scores(c, torch.float64).numpy(), "iou": image_iou(c, torch.float64).numpy()}


# --------------------------------------------------------------------------- figures


def mean_curve(cells: Sequence[Cell], column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs and the mean and sample sd (NaN with one value) over cells of `column` at each epoch."""
    epochs = sorted({r["epoch"] for c in cells for r in c.rows if "epoch" in r})
    means, sds = [], []
    for epoch in epochs:
        values = [r.get(column, math.nan) for c in cells for r in c.rows if r.get("epoch") == epoch]
        stats = mean_sd(values)
        means.append(stats["mean"])
        sds.append(stats["sd"])
    return np.array(epochs, dtype=np.float64), np.array(means), np.array(sds)


def draw_curves(cells: dict[str, list[Cell]], key: str, path: Path) -> Path:
    panels = {}
    for column in (f"val/{key}", "val/loss"):
        panels[column] = [(variant, *mean_curve(group, column)) for variant, group in cells.items() if group]
    return save_band_curves(path, panels, title="mean over seeds (band: ± sd)")


def draw_predictions(cells: dict[str, list[Cell]], baseline: str, path: Path) -> str | None:
    """Validation images predicted by each variant's first finished cell; returns why it was skipped, if so."""
    # Cells kept without their checkpoints (benchmarks/results/studies) cannot predict: use the first that can.
    firsts = {variant: kept[0] for variant, group in cells.items()
              if (kept := [cell for cell in group if RunFolder(cell.path).has_checkpoint("best")])}
    if not firsts:
        return "predictions figure skipped: no finished cell keeps its checkpoints/best.pt"
    reference = firsts.get(baseline) or next(iter(firsts.values()))
    try:
        config = RunFolder(reference.path).read_config()
        dataset = load_for_config(config, reference.evaluation["data"])
    except (UnetlabError, OSError, KeyError) as exc:
        return f"predictions figure skipped: cannot load the validation data ({exc})"
    position = {str(i): k for k, i in enumerate(dataset.ids)}
    val = np.array([position[i] for i in per_image_counts(reference.evaluation)[0] if i in position])
    if val.size == 0:
        return "predictions figure skipped: the validation images are not in the data"
    picked = figure_indices(val, dataset, FIGURE_IMAGES, seed=0)
    images = [dataset.images[i] for i in picked]
    multiclass = reference.task == "multiclass"
    truths = [np.where(dataset.valid[i], dataset.masks[i], 255) if multiclass and dataset.valid is not None
              else dataset.masks[i] for i in picked]
    predictions = {}
    for variant, cell in firsts.items():
        predictor = Predictor.load(cell.path)
        predictions[f"{variant} (seed {cell.seed})"] = [predictor.labels(p) for p in predictor.predict_proba(images)]
    save_variant_predictions(path, images, truths, predictions, row_labels=[str(dataset.ids[i]) for i in picked],
                             class_names=reference.evaluation.get("class_names") if multiclass else None,
                             palette=dataset.palette if multiclass else None, ignore_index=255 if multiclass else None)
    return None


# --------------------------------------------------------------------------- threshold analysis

CRITERIA = ("max F1", "max IoU", "max TGS metric", "recall >= 0.95", "precision >= 0.95")
_SWEEP_COLUMNS = {"precision": "precision", "recall": "recall", "F1": "dice", "IoU": "iou", "TGS metric": "tgs_map"}
OPTIMISTIC = ("These operating points are chosen on the same validation images they are reported on, so their "
              "scores are optimistic; confirm a chosen threshold on images it was not chosen on.")


def operating_point(sweep: dict[str, np.ndarray], criterion: str) -> int | None:
    """Index into one seed's threshold sweep chosen by `criterion` (first, i.e. lowest threshold, on ties):
    the maximum of F1, IoU or TGS metric; the highest precision with recall >= 0.95; the highest recall with
    precision >= 0.95. None when no threshold meets the constraint."""
    column = {"max F1": "dice", "max IoU": "iou", "max TGS metric": "tgs_map"}.get(criterion)
    if column is not None:
        return int(np.argmax(sweep[column]))
    constraint, goal = ("recall", "precision") if criterion.startswith("recall") else ("precision", "recall")
    allowed = sweep[constraint] >= 0.95
    return int(np.argmax(np.where(allowed, sweep[goal], -np.inf))) if allowed.any() else None


def _sweeps(evaluations: Sequence[dict]) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    thresholds = np.asarray(evaluations[0]["sweep"]["threshold"], dtype=np.float64)
    sweeps = []
    for evaluation in evaluations:
        sweep = {k: np.asarray(v, dtype=np.float64) for k, v in evaluation["sweep"].items()}
        if not np.array_equal(sweep["threshold"], thresholds):
            raise UnetlabError(f"{evaluation.get('run')}: its threshold sweep differs from the other seeds'")
        sweeps.append(sweep)
    return thresholds, sweeps


def _criteria_table(sweeps: Sequence[dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    table = {}
    for criterion in CRITERIA:
        chosen = [(sweep, operating_point(sweep, criterion)) for sweep in sweeps]
        chosen = [(sweep, at) for sweep, at in chosen if at is not None]
        row: dict[str, Any] = {"seeds": len(chosen), "threshold": mean_sd([s["threshold"][at] for s, at in chosen])}
        for name, column in _SWEEP_COLUMNS.items():
            row[name] = mean_sd([s[column][at] for s, at in chosen])
        table[criterion] = row
    return table


def threshold_analysis(evaluations: Sequence[dict], report_dir: Path, label: str = "baseline",
                       seeds: Sequence[int] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Threshold analysis of binary cells (the baseline's seeds) from their evaluation sweeps: metrics against
    the threshold (threshold.png), the precision-recall curve of salt pixels (precision-recall.png), the
    operating point of each criterion chosen per seed (mean ± sd over seeds) and the min-area sweep.
    Returns the summary and the report's Markdown lines."""
    if not evaluations or any(e.get("task", "binary") != "binary" or "sweep" not in e for e in evaluations):
        return {}, ["Threshold analysis: needs finished binary cells with threshold sweeps; none here.", ""]
    thresholds, sweeps = _sweeps(evaluations)
    curves = {name: (np.mean([s[col] for s in sweeps], 0), np.std([s[col] for s in sweeps], 0, ddof=1)
                     if len(sweeps) > 1 else None) for name, col in _SWEEP_COLUMNS.items()}
    save_band_curves(report_dir / "threshold.png", {f"{label}: salt pixels and TGS metric against the threshold":
                     [(name, thresholds, m, sd) for name, (m, sd) in curves.items()]}, xlabel="probability threshold",
                     ylim=(0.0, 1.02))
    table = _criteria_table(sweeps)
    points = [(c, row["recall"]["mean"], row["precision"]["mean"]) for c, row in table.items() if row["seeds"]]
    save_pr_curves(report_dir / "precision-recall.png",
                   [(f"seed {seed}", s["recall"], s["precision"]) for seed, s in
                    zip(seeds if seeds is not None else range(len(sweeps)), sweeps)], points)
    areas = _min_area_summary(evaluations)
    summary = {"thresholds": thresholds.tolist(), "seeds": len(sweeps),
               "curves": {n: {"mean": m.tolist(), "sd": None if sd is None else sd.tolist()}
                          for n, (m, sd) in curves.items()}, "operating_points": table, "min_area": areas}
    return summary, _threshold_markdown(label, len(sweeps), table, areas)


def _min_area_summary(evaluations: Sequence[dict]) -> dict[str, Any]:
    sweeps = [e["min_area_sweep"] for e in evaluations if "min_area_sweep" in e]
    if not sweeps:
        return {}
    areas = sweeps[0]["min_area"]
    tgs = np.array([s["tgs_map"] for s in sweeps], dtype=np.float64)
    return {"min_area": areas, "tgs_map": [mean_sd(tgs[:, k]) for k in range(len(areas))],
            "best": mean_sd([areas[int(np.argmax(row))] for row in tgs])}


def _threshold_markdown(label: str, seeds: int, table: dict[str, dict], areas: dict[str, Any]) -> list[str]:
    names = ["threshold", *_SWEEP_COLUMNS]
    lines = ["## Threshold analysis", "",
             f"Baseline {label}, {seeds} seed(s): each seed's validation sweep (thresholds 0.05 to 0.95) picks its "
             "own operating point; the table gives mean ± sd over the seeds that reach the criterion (F1 is the "
             "Dice of salt pixels).", "",
             "| criterion | seeds | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
    for criterion, row in table.items():
        cells = " | ".join(_fmt(row[n]) if row["seeds"] else "none reaches it" for n in names)
        lines.append(f"| {criterion} | {row['seeds']} of {seeds} | {cells} |")
    lines += ["", OPTIMISTIC, "", "![threshold](threshold.png) ![precision-recall](precision-recall.png)", ""]
    if areas:
        lines += ["Minimum predicted area (at the operating threshold): TGS metric, mean ± sd over seeds; best per "
                  f"seed {_fmt(areas['best'], 1)} px (chosen on the same images).", "",
                  "| min area | " + " | ".join(f"{a:g}" for a in areas["min_area"]) + " |",
                  "|---" * (1 + len(areas["min_area"])) + "|",
                  "| TGS metric | " + " | ".join(_fmt(v) for v in areas["tgs_map"]) + " |", ""]
    return lines


# --------------------------------------------------------------------------- tables and the report


def _fmt(stats: dict[str, Any], digits: int = 4) -> str:
    mean, sd = stats["mean"], stats["sd"]
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if math.isfinite(sd) else f"{mean:.{digits}f}"


def variant_summary(records: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """mean ± sd over a variant's cells of each key of its cells.csv rows."""
    return {key: mean_sd([r.get(key, math.nan) for r in records]) for key in keys}


def _quality_lines(summary: dict[str, Any], keys: Sequence[str]) -> list[str]:
    header = ["variant", "cells", *(_NAMES.get(k, k) for k in keys), "val loss"]
    lines = ["## Scores on the validation split (mean ± sd over seeds)", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, variant in summary["variants"].items():
        stats = variant["metrics"]
        values = [_fmt(stats[k]) for k in keys] + [_fmt(stats["val_loss"])]
        lines.append(f"| {name} | {variant['done']} of {variant['planned']} | " + " | ".join(values) + " |")
    return lines + ["", "Scores of the best checkpoint (evaluation/best-val.json); validation loss from metrics.csv "
                    "at that epoch; sd is the sample standard deviation over seeds (only the mean with one seed).", ""]


def _cost_lines(summary: dict[str, Any]) -> list[str]:
    header = ["variant", "best epoch", "parameters", "GFLOPs/image", "training time (s)", "train images/s"]
    lines = ["## Cost", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, variant in summary["variants"].items():
        stats = variant["metrics"]
        params = format_count(int(variant["params"])) if variant.get("params") is not None else "n/a"
        gflops = format_gflops(variant["gflops"]) if variant.get("gflops") is not None else "n/a"
        lines.append(f"| {name} | {_fmt(stats['best_epoch'], 1)} | {params} | {gflops} | "
                     f"{_fmt(stats['time_s'], 1)} | {_fmt(stats['images_per_s'], 1)} |")
    return lines + ["", "GFLOPs of one forward pass at data.input_size (convolutions and linear layers); training "
                    "time is metrics.csv's time_s at the last epoch; images/s its mean over epochs.", ""]


def _comparison_lines(summary: dict[str, Any]) -> list[str]:
    label = _NAMES.get(summary["metric_key"], summary["metric_key"])
    lines = [f"## Difference against the baseline ({summary['baseline']}), {label}", "",
             "| variant | paired seeds | images | difference | 95 % interval |", "|---|---|---|---|---|"]
    for name, comparison in summary["comparisons"].items():
        ci = comparison.get("ci95")
        interval = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else comparison.get("note", "n/a")
        difference = f"{comparison['difference']:+.4f}" if comparison.get("difference") is not None else "n/a"
        lines.append(f"| {name} | {len(comparison.get('seeds', []))} | {comparison.get('images', 'n/a')} | "
                     f"{difference} | {interval} |")
    lines += [""] + [f"- {comparison['verdict']}" for comparison in summary["comparisons"].values()]
    return lines + ["", f"Paired bootstrap, {RESAMPLES} resamples (numpy default_rng({RNG_SEED})): each resample "
                    "draws the validation images and the paired seeds with replacement, recomputes the metric of "
                    "every drawn cell from its per-image counts and averages variant minus baseline over the drawn "
                    "seeds; the interval is the 2.5 and 97.5 percentiles. With one paired seed it shows only the "
                    "spread over images, not over seeds, and with few images it is too narrow.", ""]


def _plain_json(value: Any) -> Any:
    """JSON-safe: NaN and infinities as null, numpy scalars and arrays as Python values."""
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain_json(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarise(spec: Any, cells: dict[str, list[Cell]], missing: list[str]) -> tuple[dict[str, Any], list[dict]]:
    """Everything the report shows, and the cells.csv rows."""
    finished = [c for group in cells.values() for c in group]
    task = finished[0].task if finished else "binary"
    key = study_metric(spec, task)
    keys = list(dict.fromkeys([key, *(BINARY_KEYS if task == "binary" else MULTICLASS_KEYS)]))
    baseline = getattr(spec, "baseline", None) or next(iter(spec.variants))
    records, variants = [], {}
    for name, group in cells.items():
        cost = model_cost(group[0].path) if group else {"params": None, "gflops": None}
        rows = [cell_record(cell, cost) for cell in group]
        records += rows
        stats = variant_summary(rows, [*keys, "val_loss", "best_epoch", "time_s", "images_per_s"])
        variants[name] = {"overrides": list(spec.variants[name] or []), "seeds": [c.seed for c in group],
                          "planned": len(spec.seeds), "done": len(group), "metrics": stats, **cost,
                          "per_image": per_image_means(group)}
    comparisons = {}
    for name, group in cells.items():
        if name != baseline:
            comparison = compare(group, cells.get(baseline, []), key)
            comparison["verdict"] = verdict(name, baseline, comparison, _NAMES.get(key, key))
            comparisons[name] = comparison
    planned = len(spec.variants) * len(spec.seeds)
    summary = {"name": spec.name, "description": getattr(spec, "description", None), "task": task,
               "metric": f"val/{key}", "metric_key": key, "keys": keys, "baseline": baseline,
               "cells": {"planned": planned, "done": len(finished), "missing": missing,
                         "shared": {f"{c.variant}/seed-{c.seed}": c.shared_from for c in finished if c.shared_from}},
               "variants": variants, "comparisons": comparisons,
               "bootstrap": {"resamples": RESAMPLES, "rng_seed": RNG_SEED, "interval": "percentile 2.5-97.5",
                             "resampled": "validation images and paired seeds, with replacement"}}
    return summary, records


def _markdown(summary: dict[str, Any], notes: list[str], threshold_lines: list[str]) -> str:
    cells = summary["cells"]
    lines = [f"# Study report: {summary['name']}", ""]
    if summary.get("description"):
        lines += [str(summary["description"]).strip(), ""]
    lines += [f"{cells['done']} of {cells['planned']} cells done"
              + (f"; not finished: {', '.join(cells['missing'])}." if cells["missing"] else "."),
              "", f"Study metric: {summary['metric']}; baseline: {summary['baseline']}.", ""]
    if cells.get("shared"):
        lines += ["Trained once and shared with another study (same config, seed, data and split): "
                  + "; ".join(f"{label} is {origin.get('study', '?')}'s {origin.get('cell', '?')}"
                              for label, origin in cells["shared"].items()) + ".", ""]
    lines += _quality_lines(summary, summary["keys"]) + _cost_lines(summary)
    if summary["comparisons"]:
        lines += _comparison_lines(summary)
    if cells["done"]:
        lines += ["## Learning curves", "", "![learning curves](curves.png)", "", "## Predictions", ""]
        lines += [f"*{note}*" for note in notes] or [
            "The same validation images (chosen reproducibly, empty and non-empty) predicted by each variant's "
            "first finished seed: red is the prediction, green the truth.", "", "![predictions](predictions.png)"]
    else:
        lines += ["No cell has finished yet: no figures."]
    return "\n".join(lines + [""] + threshold_lines) + "\n"


def build_report(spec: Any, study: Any) -> Path:
    """Write `<study_dir>/report/` (report.md, cells.csv, summary.json, figures) from the finished cells;
    `study` is the study folder (a path, or an object with a `path`). Returns the report folder."""
    study_dir = Path(getattr(study, "path", study))
    report_dir = study_dir / "report"
    cells, missing = load_cells(spec, study_dir)
    summary, records = summarise(spec, cells, missing)
    notes: list[str] = []
    threshold_lines: list[str] = []
    if records:
        draw_curves(cells, summary["metric_key"], report_dir / "curves.png")
        note = draw_predictions(cells, summary["baseline"], report_dir / "predictions.png")
        notes += [note] if note else []
    if getattr(spec, "analysis", None) == "threshold":
        base = cells.get(summary["baseline"], [])
        analysis, threshold_lines = threshold_analysis([c.evaluation for c in base], report_dir,
                                                       summary["baseline"], [c.seed for c in base])
        summary["threshold_analysis"] = analysis
    atomic_write_text(report_dir / "cells.csv", csv_text(records, first=("variant", "seed")))
    atomic_write_text(report_dir / "summary.json", json.dumps(_plain_json(summary), indent=1))
    atomic_write_text(report_dir / "report.md", _markdown(summary, notes, threshold_lines))
    return report_dir
