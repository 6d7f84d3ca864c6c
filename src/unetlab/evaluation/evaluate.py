"""`unetlab evaluate RUN --data DIR`: metrics at the operating threshold and min area, a threshold
sweep of salt-pixel precision/recall, a min-area sweep, and the seed's figure (image / truth /
prediction for training and validation samples). Results go to
RUN/evaluation/<checkpoint>-<split>[-tta-X][-tT][-aN].json (the suffixes only when TTA, threshold
or min area differ from the run's) and RUN/report.md lists them all.

Each JSON also holds the scores of every image of the set, in the order of `ids`, so that any subset of
the images can be scored again exactly (a study's bootstrap resamples them):

* binary: ``"per_image": {"ids", "tp", "fp", "fn", "tn", "tgs", "iou"}``: the pixel counts at the operating
  threshold and min area (the accumulator's own per-image counts), the TGS score and the IoU of each image.
  Summed counts give the micro metrics (`metrics.micro_scores`); the mean of `tgs` is `tgs_map`;
* multiclass: ``"per_image": {"ids", "confusion"}``: one C x C confusion matrix per image over its
  labelled pixels (rows truth, columns prediction); their sum is ``"confusion"``, and
  `metrics.multiclass_scores` of a sum gives that subset's mIoU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from unetlab.data.formats.registry import load_for_config
from unetlab.data.dataset import ArrayDataset
from unetlab.data.splits import load_split
from unetlab.errors import UnetlabError
from unetlab.files import atomic_write_text
from unetlab.inference.predictor import Predictor, decoding_options
from unetlab.metrics import BinarySegmentationMetrics, image_iou, scores_over_thresholds, tgs_image_scores
from unetlab.run_folder import RunFolder
from unetlab.tasks import MulticlassTask
from unetlab.viz import save_multiclass_samples, save_prediction_grid, save_threshold_curve

METRIC_NAMES = ("tgs_map", "iou", "dice", "precision", "recall", "pixel_accuracy", "mean_image_iou")
MULTICLASS_METRIC_NAMES = ("miou", "pixel_accuracy", "mean_accuracy", "mean_dice", "fw_iou")
SWEEP = [round(0.05 * k, 2) for k in range(1, 20)]
AREA_SWEEP = [0, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300]  # eval.min_area values tried at the operating threshold


def binary_per_image(metrics: BinarySegmentationMetrics, ids: list[str]) -> dict[str, list]:
    """The accumulator's per-image counts [tp, fp, fn, tn], TGS score and IoU, one entry per image of `ids`."""
    counts = metrics.state().cpu()
    if counts.shape[0] != len(ids):
        raise ValueError(f"{counts.shape[0]} images scored but {len(ids)} ids")
    columns = dict(zip(("tp", "fp", "fn", "tn"), counts.T.tolist()))
    return {"ids": list(ids), **columns, "tgs": tgs_image_scores(counts, torch.float64).tolist(),
            "iou": image_iou(counts, torch.float64).tolist()}


def multiclass_per_image(task: MulticlassTask, probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None
                         ) -> list[list[list[int]]]:
    """One confusion matrix per image, each scored by its own accumulator of the task (as the set's is)."""
    matrices = []
    for j in range(probs.shape[0]):
        metrics = task.new_metrics()
        task.update_metrics(metrics, probs[j : j + 1], truth[j : j + 1], None if valid is None else valid[j : j + 1])
        matrices.append(metrics.confusion().tolist())
    return matrices


def result_json(result: dict) -> str:
    """The evaluation JSON: indented, but each per-image list on one line (a list per line, not a number)."""
    per_image = result.get("per_image")
    text = json.dumps({k: v for k, v in result.items() if k != "per_image"}, indent=1)
    if per_image is None:
        return text
    lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in per_image.items())
    return text[: -len("\n}")] + f',\n "per_image": {{\n{lines}\n }}\n}}'


def _choose_indices(folder: RunFolder, dataset: ArrayDataset, split: str) -> tuple[str, dict[str, np.ndarray]]:
    """Index sets by name; 'auto' is the run's validation split when the data holds its ids, else all."""
    everything = np.arange(len(dataset))
    split_file = folder.split_path
    sets: dict[str, np.ndarray] = {"all": everything}
    if split_file.is_file():
        try:
            sets["train"], sets["val"] = load_split(split_file, dataset.ids)
        except UnetlabError:
            if split in ("train", "val"):
                raise
    if split == "auto":
        split = "val" if "val" in sets else "all"
    if split not in sets:
        raise UnetlabError(f"--split {split}: {folder.path} has no {RunFolder.SPLIT} matching this data; "
                           "use --split all")
    return split, sets


def _row(dataset: ArrayDataset, index: int, pred: np.ndarray, prob: np.ndarray, group: str) -> dict:
    truth = dataset.masks[index]
    union = np.logical_or(truth, pred).sum()
    iou = np.logical_and(truth, pred).sum() / union if union else 1.0
    label = f"{group} {dataset.ids[index]}  foreground {truth.mean():.0%}  IoU {iou:.2f}"
    return {"image": dataset.images[index], "truth": truth, "prediction": pred, "probability": prob, "label": label}


def figure_indices(indices: np.ndarray, dataset: ArrayDataset, count: int, seed: int) -> np.ndarray:
    """A reproducible sample that shows both empty and salt images when the set has them."""
    rng = np.random.default_rng(seed)
    if len(indices) <= count:
        return indices
    has_salt = dataset.masks[indices].any(axis=(1, 2))
    salt, empty = indices[has_salt], indices[~has_salt]
    n_empty = min(len(empty), max(count // 4, 1) if len(empty) else 0)
    chosen = np.concatenate([rng.choice(salt, min(count - n_empty, len(salt)), replace=False),
                             rng.choice(empty, n_empty, replace=False)])
    return np.sort(chosen)


def _sweep(probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None, min_area: int
           ) -> dict[str, torch.Tensor]:
    """Metrics at every threshold of SWEEP; with ignored pixels, one accumulator per threshold."""
    if valid is None:
        return scores_over_thresholds(probs, truth, SWEEP, min_area)
    rows = []
    for threshold in SWEEP:
        metrics = BinarySegmentationMetrics(threshold, min_area)
        metrics.update(probs, truth, valid=valid)
        rows.append(metrics.compute())
    sweep = {key: torch.tensor([row[key] for row in rows], dtype=torch.float64)
             for key in ("precision", "recall", "iou", "dice", "tgs_map")}
    return {"threshold": torch.tensor(SWEEP, dtype=torch.float64), **sweep}


def _area_sweep(probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None, threshold: float
                ) -> dict[str, list[float]]:
    """Metrics at every eval.min_area of AREA_SWEEP, at the operating threshold."""
    rows = []
    for min_area in AREA_SWEEP:
        metrics = BinarySegmentationMetrics(threshold, min_area)
        metrics.update(probs, truth, valid=valid)
        rows.append(metrics.compute())
    return {"min_area": [float(a) for a in AREA_SWEEP],
            **{key: [row[key] for row in rows] for key in ("precision", "recall", "iou", "tgs_map")}}


def write_report(run_dir: Path) -> Path:
    """RUN/report.md: one line per evaluation/*.json of the run."""
    folder = RunFolder(run_dir)
    rows = []
    for path in folder.evaluation_paths():
        result = json.loads(path.read_text())
        rows.append(result)
    multiclass = any(r.get("task") == "multiclass" for r in rows)
    names = MULTICLASS_METRIC_NAMES if multiclass else METRIC_NAMES
    lines = ["# Evaluation report", "", f"Run: `{run_dir}`", "",
             "| checkpoint | epoch | split | images | threshold | min area | TTA | " + " | ".join(names) + " |",
             "|---" * (7 + len(names)) + "|"]
    for r in rows:
        values = " | ".join(f"{r['metrics'].get(k, float('nan')):.4f}" for k in names)
        threshold = "argmax" if r.get("task") == "multiclass" else f"{r['threshold']:.2f}"
        min_area = "-" if r.get("task") == "multiclass" else r.get("min_area", 0)
        lines.append(f"| {r['checkpoint']} | {r['epoch']} | {r['split']} | {r['images']} | {threshold} | "
                     f"{min_area} | {r['tta']} | {values} |")
    if multiclass:
        lines += ["", "mIoU: mean over classes of TP / (TP + FP + FN) over all labelled pixels of the set (a class "
                  "in neither truth nor prediction is left out); ignored pixels count nowhere. Per-class IoU is in "
                  "each evaluation/*.json.", ""]
    else:
        lines += ["", "TGS metric: per image, precision averaged over IoU thresholds 0.50..0.95 (an image with no "
                  "salt scores 1 when nothing is predicted, else 0); mean over images. IoU, Dice, precision and "
                  "recall are over all salt pixels of the set; salt where probability > threshold, and none in "
                  "an image where fewer than 'min area' pixels pass it.", ""]
    for r in rows:
        lines.append(f"Command: `{r['command']}`")
    return atomic_write_text(folder.report_path, "\n".join(lines) + "\n")


def _result_tag(predictor: Predictor, which: str, split: str, tta: str, threshold: float, min_area: int) -> str:
    """One result file per setting: non-default TTA, threshold or min area get their own, so none overwrites
    another."""
    tag = f"{which}-{split}"
    if tta != predictor.config.eval.tta:
        tag += f"-tta-{tta}"
    if threshold != predictor.threshold:
        tag += f"-t{threshold:g}"
    if min_area != predictor.config.eval.min_area:
        tag += f"-a{min_area}"
    return tag


def _figure_rows(predictor: Predictor, dataset: ArrayDataset, sets: dict[str, np.ndarray], split: str,
                 probs: list[np.ndarray], decoding: tuple[float, int, str], figure_samples: int) -> list[dict]:
    """Rows of the predictions figure: samples of the scored set (and of the training set when it is val)."""
    threshold, min_area, tta = decoding
    indices = sets[split]
    rows = []
    position = {int(i): k for k, i in enumerate(indices)}
    groups = [("val", sets["val"]), ("train", sets["train"])] if split == "val" else [(split, indices)]
    for group, members in groups:
        picked = figure_indices(members, dataset, figure_samples, seed=0)
        extra = [i for i in picked if int(i) not in position]
        extra_probs = dict(zip(extra, predictor.predict_proba([dataset.images[i] for i in extra], tta=tta)))
        for i in picked:
            prob = probs[position[int(i)]] if int(i) in position else extra_probs[i]
            rows.append(_row(dataset, int(i), predictor.labels(prob, threshold, min_area).astype(bool), prob,
                             group))
    return rows


def evaluate(run: str | Path, data_root: str | Path, split: str = "auto", threshold: float | None = None,
             tta: str | None = None, which: str = "best", figure_samples: int = 6,
             log: Callable[[str], None] = print, command: str | None = None,
             dataset: ArrayDataset | None = None, min_area: int | None = None) -> dict:
    """Score checkpoint `which` of `run` on `data_root`; write JSON, report.md and figures into the run."""
    run = Path(run)
    checkpoint = RunFolder.resolve_checkpoint(run, which)
    folder = RunFolder.of(checkpoint)
    run_dir = folder.path
    predictor = Predictor.load(checkpoint)
    threshold, min_area = decoding_options(predictor, threshold, min_area)
    tta = predictor.config.eval.tta if tta is None else tta
    if dataset is None:
        dataset = load_for_config(predictor.config, data_root)
    split, sets = _choose_indices(folder, dataset, split)
    indices = sets[split]
    if predictor.task.name == "multiclass":
        return _evaluate_multiclass(predictor, folder, dataset, data_root, split, sets, which, tta,
                                    figure_samples, log, command or f"unetlab evaluate {run} --data {data_root} "
                                    f"--split {split} --which {which}")
    probs = predictor.predict_proba([dataset.images[i] for i in indices], tta=tta)
    prob_t = torch.from_numpy(np.stack(probs))
    truth_t = torch.from_numpy(dataset.masks[indices])
    valid_t = None if dataset.valid is None else torch.from_numpy(dataset.valid[indices])
    metrics = BinarySegmentationMetrics(threshold, min_area)
    metrics.update(prob_t, truth_t, valid=valid_t)
    scores = metrics.compute()
    per_image = binary_per_image(metrics, [str(dataset.ids[i]) for i in indices])
    sweep = _sweep(prob_t, truth_t, valid_t, min_area)
    best_at = int(torch.argmax(sweep["tgs_map"]))
    area_sweep = _area_sweep(prob_t, truth_t, valid_t, threshold)
    best_area_at = int(np.argmax(area_sweep["tgs_map"]))
    epoch = predictor.epoch

    tag = _result_tag(predictor, which, split, tta, threshold, min_area)
    save_threshold_curve(folder.figure_path(f"threshold-{tag}.png"), SWEEP, sweep["precision"].numpy(),
                         sweep["recall"].numpy(), sweep["tgs_map"].numpy(), chosen=threshold)
    rows = _figure_rows(predictor, dataset, sets, split, probs, (threshold, min_area, tta), figure_samples)
    save_prediction_grid(folder.figure_path(f"predictions-{tag}.png"), rows,
                         title=f"{run_dir.name}: {which} checkpoint (epoch {epoch}), threshold {threshold:.2f}, "
                               f"TTA {tta}" + (f", min area {min_area}" if min_area else ""))
    result = {
        "run": str(run_dir), "checkpoint": which, "epoch": epoch, "data": str(data_root), "split": split,
        "images": int(len(indices)), "threshold": threshold, "tta": tta, "min_area": min_area, "metrics": scores,
        "sweep": {k: [float(v) for v in t] for k, t in sweep.items()},
        "best_threshold_on_this_set": SWEEP[best_at],
        "min_area_sweep": area_sweep,
        "best_min_area_on_this_set": AREA_SWEEP[best_area_at],
        "command": command or f"unetlab evaluate {run} --data {data_root} --split {split} --which {which}",
        "per_image": per_image,
    }
    atomic_write_text(folder.evaluation_path(tag), result_json(result))
    write_report(folder.path)
    log(f"{which} checkpoint (epoch {epoch}) on {split} ({len(indices)} images), threshold {threshold:.2f}, "
        f"min area {min_area}, TTA {tta}: " + "  ".join(f"{k} {scores[k]:.4f}" for k in METRIC_NAMES))
    log(f"threshold sweep on this set: best TGS metric {float(sweep['tgs_map'][best_at]):.4f} at "
        f"{SWEEP[best_at]:.2f}; min-area sweep: best {area_sweep['tgs_map'][best_area_at]:.4f} at "
        f"{AREA_SWEEP[best_area_at]} px (tune both on validation data only)")
    log(f"wrote {folder.report_path} and {RunFolder.FIGURES}/predictions-{tag}.png")
    return result


def _evaluate_multiclass(predictor: Predictor, folder: RunFolder, dataset: ArrayDataset, data_root: str | Path,
                         split: str, sets: dict[str, np.ndarray], which: str, tta: str, figure_samples: int,
                         log: Callable[[str], None], command: str) -> dict:
    """Multiclass scoring: argmax labels, confusion-matrix metrics over labelled pixels, a colour figure."""
    task = predictor.task
    indices = sets[split]
    metrics = task.new_metrics()
    labels: list[np.ndarray] = []
    per_image: list[list[list[int]]] = []
    for start in range(0, len(indices), 64):  # bounded memory: C probability maps per image
        chunk = indices[start : start + 64]
        probs = predictor.predict_proba([dataset.images[i] for i in chunk], tta=tta)
        prob_t = torch.from_numpy(np.stack(probs))
        valid_t = None if dataset.valid is None else torch.from_numpy(dataset.valid[chunk])
        truth_t = torch.from_numpy(dataset.masks[chunk].astype(np.int64))
        task.update_metrics(metrics, prob_t, truth_t, valid_t)
        per_image += multiclass_per_image(task, prob_t, truth_t, valid_t)
        labels += [predictor.labels(p) for p in probs]
    scores = metrics.compute()
    confusion = metrics.confusion().tolist()
    tag = f"{which}-{split}" + (f"-tta-{tta}" if tta != predictor.config.eval.tta else "")
    shown = indices[: figure_samples]
    truths = [np.where(dataset.valid[i], dataset.masks[i], 255) if dataset.valid is not None else dataset.masks[i]
              for i in shown]
    save_multiclass_samples(folder.figure_path(f"predictions-{tag}.png"), [dataset.images[i] for i in shown],
                            truths, labels[: len(shown)], task.class_names, ignore_index=255, palette=task.palette or dataset.palette,
                            titles=[dataset.ids[i] for i in shown])
    result = {
        "run": str(folder.path), "task": "multiclass", "checkpoint": which, "epoch": predictor.epoch,
        "data": str(data_root), "split": split, "images": int(len(indices)), "threshold": None, "tta": tta,
        "class_names": task.class_names, "metrics": scores, "confusion": confusion, "command": command,
        "per_image": {"ids": [str(dataset.ids[i]) for i in indices], "confusion": per_image},
    }
    atomic_write_text(folder.evaluation_path(tag), result_json(result))
    write_report(folder.path)
    log(f"{which} checkpoint (epoch {predictor.epoch}) on {split} ({len(indices)} images), TTA {tta}: "
        + "  ".join(f"{k} {scores[k]:.4f}" for k in MULTICLASS_METRIC_NAMES))
    log(f"wrote {folder.report_path} and {RunFolder.FIGURES}/predictions-{tag}.png")
    return result
