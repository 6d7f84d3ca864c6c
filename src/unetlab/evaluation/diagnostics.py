"""Where a model fails, from an evaluation's per-image data: the k worst images as a gallery, the TGS
metric per salt-coverage bin (binary), the per-class table and confusion-matrix figure (multiclass),
and their report.md sections.

Everything is computed from what `evaluate` already keeps per image (binary: the accumulator's counts
[tp, fp, fn, tn], TGS score and IoU; multiclass: one confusion matrix per image) through the
`unetlab.metrics` functions, so a bin's or a class's numbers are the same metrics as the set's. Only
the gallery needs predicted masks, and only of the k images shown: the caller passes `predict`, which
decodes those few images exactly as the scores were decoded.

* Worst images. Binary: lowest per-image TGS score first, ties broken by the lower per-image IoU, then by
  position in the set. Multiclass: lowest per-image mIoU (over the classes in that image's truth or
  prediction) first, ties by the lower pixel accuracy; an image without a labelled pixel is not ranked.
* Coverage bins (binary). An image's salt coverage is its true salt pixels over its labelled pixels:
  ``empty`` none, ``small`` above 0 and at most SMALL_COVERAGE (10 %), ``large`` above that. Per bin: the
  image count, the TGS metric (mean per-image score), and IoU, precision and recall over the bin's pixels,
  i.e. `BinarySegmentationMetrics` on the bin's images alone; a bin without images has no values (None).
* Per class (multiclass). Class c against the rest: precision = TP / (TP + FP) (None when c is never
  predicted), recall = TP / (TP + FN) (None when c is not in the truth), IoU as `multiclass_scores`
  (None when c is in neither), pixel share = c's share of the labelled truth pixels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from unetlab.data.dataset import ArrayDataset
from unetlab.errors import UnetlabError
from unetlab.metrics import BinarySegmentationMetrics, micro_scores, multiclass_scores, tag_safe_name
from unetlab.run_folder import RunFolder
from unetlab.viz import save_confusion_matrix, save_error_gallery

SMALL_COVERAGE = 0.10  # largest salt share of an image that is still "small"
COVERAGE_BINS = (("empty", "0"), ("small", f"(0, {SMALL_COVERAGE:.0%}]"), ("large", f"({SMALL_COVERAGE:.0%}, 100%]"))
BIN_METRICS = ("tgs_map", "iou", "precision", "recall")
CLASS_COLUMNS = ("iou", "precision", "recall", "pixel_share")
BINARY_RANKING = "lowest TGS score first, ties by lowest IoU"
MULTICLASS_RANKING = "lowest per-image mIoU first, ties by lowest pixel accuracy"

Predict = Callable[[list[np.ndarray]], list[np.ndarray]]  # images -> predicted masks / label maps, as scored


def check_worst(worst: int) -> None:
    """`--worst K`: a count of images (0: no gallery)."""
    if worst < 0:
        raise UnetlabError(f"--worst {worst}: must be 0 (no gallery) or the number of worst images to show")


def _number(value: float) -> float | None:
    """A metric for JSON: None where it is undefined (NaN), never a NaN in the file."""
    return None if value is None or math.isnan(value) else float(value)


# --------------------------------------------------------------------------- binary


def _counts(per_image: dict) -> torch.Tensor:
    return torch.tensor([per_image[k] for k in ("tp", "fp", "fn", "tn")], dtype=torch.int64).reshape(4, -1).T


def image_coverage(per_image: dict) -> np.ndarray:
    """Each image's salt coverage: true salt pixels (tp + fn) over labelled pixels (0 when none is labelled)."""
    counts = _counts(per_image).numpy()
    return (counts[:, 0] + counts[:, 2]) / np.maximum(counts.sum(axis=1), 1)


def image_coverage_bins(per_image: dict) -> list[str]:
    """Each image's coverage bin name (see the module docstring), from its counts."""
    return ["empty" if c == 0 else "small" if c <= SMALL_COVERAGE else "large" for c in image_coverage(per_image)]


def coverage_bins(per_image: dict) -> list[dict]:
    """One row per coverage bin: bin, coverage, images, tgs_map, iou, precision, recall (None without images)."""
    counts = _counts(per_image)
    names = np.array(image_coverage_bins(per_image))
    rows = []
    for name, span in COVERAGE_BINS:
        members = np.flatnonzero(names == name)
        row: dict = {"bin": name, "coverage": span, "images": int(len(members))}
        scores: dict = {}
        if len(members):
            metrics = BinarySegmentationMetrics()
            metrics.load_state(counts[torch.from_numpy(members)])
            scores = metrics.compute()
        rows.append({**row, **{k: _number(scores[k]) if scores else None for k in BIN_METRICS}})
    return rows


def worst_binary(per_image: dict, k: int) -> list[int]:
    """Positions (in `per_image` order) of the k worst images: lowest TGS score, then lowest IoU, then first."""
    tgs, iou = np.asarray(per_image["tgs"], np.float64), np.asarray(per_image["iou"], np.float64)
    return np.lexsort((np.arange(len(tgs)), iou, tgs))[:k].tolist()


# --------------------------------------------------------------------------- multiclass


def image_multiclass_scores(confusions: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mIoU and pixel accuracy (NaN for an image without a labelled pixel), via `multiclass_scores`."""
    scores = [multiclass_scores(torch.as_tensor(np.asarray(c, dtype=np.int64))) for c in confusions]
    return (np.array([s["miou"] for s in scores], np.float64),
            np.array([s["pixel_accuracy"] for s in scores], np.float64))


def worst_multiclass(confusions: Sequence, k: int) -> list[int]:
    """Positions of the k worst images: lowest mIoU, then lowest pixel accuracy, then first; unscored skipped."""
    miou, accuracy = image_multiclass_scores(confusions)
    order = np.lexsort((np.arange(len(miou)), accuracy, miou))
    return [int(i) for i in order if not math.isnan(miou[i])][:k]


def per_class_table(confusion: Sequence, class_names: Sequence[str]) -> list[dict]:
    """One row per class: class, iou, precision, recall, pixel_share, truth_pixels, predicted_pixels."""
    cm = torch.as_tensor(np.asarray(confusion, dtype=np.int64))
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion of shape {tuple(cm.shape)} for {len(class_names)} classes")
    iou = multiclass_scores(cm, class_names)
    tp, truth, predicted = torch.diagonal(cm), cm.sum(dim=1), cm.sum(dim=0)
    total = int(cm.sum())
    # class c against the rest as binary counts [tp, fp, fn, tn]: micro_scores gives its precision and recall
    one_vs_rest = micro_scores(torch.stack([tp, predicted - tp, truth - tp, total - truth - predicted + tp], dim=1))
    rows = []
    for c, name in enumerate(class_names):
        rows.append({
            "class": str(name), "iou": _number(iou[f"iou/{tag_safe_name(name)}"]),
            "precision": float(one_vs_rest["precision"][c]) if predicted[c] > 0 else None,
            "recall": float(one_vs_rest["recall"][c]) if truth[c] > 0 else None,
            "pixel_share": int(truth[c]) / total if total else None,
            "truth_pixels": int(truth[c]), "predicted_pixels": int(predicted[c]),
        })
    return rows


# --------------------------------------------------------------------------- figures and the JSON keys


def _relative(folder: RunFolder, path: Path) -> str:
    return path.relative_to(folder.path).as_posix()


def _gallery(folder: RunFolder, tag: str, dataset: ArrayDataset, indices: np.ndarray, positions: list[int],
             labels: list[str], predict: Predict, ranking: str, class_names: list[str] | None = None,
             palette=None) -> dict:
    """The worst images' gallery PNG and the "worst_images" JSON entry."""
    chosen = [int(indices[p]) for p in positions]
    entry = {"k": len(chosen), "ranked_by": ranking, "ids": [str(dataset.ids[i]) for i in chosen], "figure": None}
    if not chosen:
        return entry
    predictions = predict([dataset.images[i] for i in chosen])
    rows = [{"image": dataset.images[i], "truth": dataset.masks[i], "prediction": np.asarray(pred),
             "valid": None if dataset.valid is None else dataset.valid[i], "label": label}
            for i, pred, label in zip(chosen, predictions, labels)]
    path = save_error_gallery(folder.figure_path(f"worst-{tag}.png"), rows, class_names=class_names, palette=palette,
                              title=f"{len(chosen)} worst images ({ranking})")
    return {**entry, "figure": _relative(folder, path)}


def binary_diagnostics(folder: RunFolder, tag: str, dataset: ArrayDataset, indices: np.ndarray, per_image: dict,
                       worst: int, predict: Predict) -> dict:
    """Keys for a binary evaluation's JSON: "coverage_bins" and "worst_images" (its gallery written)."""
    positions = worst_binary(per_image, worst)
    bins, coverage = image_coverage_bins(per_image), image_coverage(per_image)
    labels = [f"{per_image['ids'][p]}  salt {coverage[p]:.0%} ({bins[p]})  TGS {per_image['tgs'][p]:.1f}  "
              f"IoU {per_image['iou'][p]:.2f}" for p in positions]
    return {"coverage_bins": coverage_bins(per_image),
            "worst_images": _gallery(folder, tag, dataset, indices, positions, labels, predict, BINARY_RANKING)}


def multiclass_diagnostics(folder: RunFolder, tag: str, dataset: ArrayDataset, indices: np.ndarray,
                           per_image: dict, confusion: Sequence, class_names: list[str], palette,
                           worst: int, predict: Predict) -> dict:
    """Keys for a multiclass evaluation's JSON: "per_class", "confusion_figure" and "worst_images"."""
    path = save_confusion_matrix(folder.figure_path(f"confusion-{tag}.png"), np.asarray(confusion), class_names,
                                 title=f"{tag}: row-normalised confusion matrix")
    positions = worst_multiclass(per_image["confusion"], worst)
    miou, accuracy = image_multiclass_scores([per_image["confusion"][p] for p in positions])
    labels = [f"{per_image['ids'][p]}  mIoU {m:.2f}  accuracy {a:.0%}" for p, m, a in zip(positions, miou, accuracy)]
    return {"per_class": per_class_table(confusion, class_names), "confusion_figure": _relative(folder, path),
            "worst_images": _gallery(folder, tag, dataset, indices, positions, labels, predict, MULTICLASS_RANKING,
                                     class_names, palette)}


# --------------------------------------------------------------------------- report.md


def _cell(value, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if percent else f"{value:.4f}"


def report_section(result: dict) -> list[str]:
    """report.md lines for one evaluation's diagnostics; none for a JSON written before they existed."""
    if not any(k in result for k in ("coverage_bins", "per_class", "worst_images")):
        return []
    decoding = "argmax" if result.get("task") == "multiclass" else (
        f"threshold {result['threshold']:g}, min area {result.get('min_area', 0)}, "
        f"min component {result.get('min_component', 0)}")
    lines = [f"## {result['checkpoint']} checkpoint on {result['split']} ({result['images']} images; {decoding}, "
             f"TTA {result['tta']})", ""]
    worst = result.get("worst_images") or {}
    if worst.get("figure"):
        lines += [f"Worst {worst['k']} images ({worst['ranked_by']}): image, truth, prediction, errors: "
                  f"[{worst['figure']}]({worst['figure']})", ""]
    if "coverage_bins" in result:
        lines += [f"By true salt coverage (share of an image's labelled pixels; small is at most "
                  f"{SMALL_COVERAGE:.0%}). IoU, precision and recall over the bin's pixels; in the empty bin recall "
                  "is 1 and precision 0 as soon as any salt is predicted.", "",
                  "| bin | coverage | images | TGS metric | IoU | precision | recall |", "|---" * 7 + "|"]
        lines += [f"| {r['bin']} | {r['coverage']} | {r['images']} | "
                  + " | ".join(_cell(r[k]) for k in BIN_METRICS) + " |" for r in result["coverage_bins"]]
    if "per_class" in result:
        if result.get("confusion_figure"):
            lines += [f"Confusion matrix (rows: true class, normalised): "
                      f"[{result['confusion_figure']}]({result['confusion_figure']})", ""]
        lines += ["Per class, against all other classes over the labelled pixels ('-': undefined, the class is "
                  "never predicted / not in the truth / in neither).", "",
                  "| class | IoU | precision | recall | pixel share |", "|---" * 5 + "|"]
        lines += [f"| {r['class']} | {_cell(r['iou'])} | {_cell(r['precision'])} | {_cell(r['recall'])} | "
                  f"{_cell(r['pixel_share'], percent=True)} |" for r in result["per_class"]]
    return lines + [""]
