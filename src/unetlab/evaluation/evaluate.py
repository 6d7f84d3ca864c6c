"""`unetlab evaluate RUN --data DIR`: metrics at the operating threshold and image rules (the run's saved
operating point when it has one for this checkpoint, else the checkpoint's threshold and eval rules), a
threshold sweep of salt-pixel precision/recall, a min-area sweep, and the seed's figure (image / truth /
prediction for training and validation samples). Results go to
RUN/evaluation/<checkpoint>-<split>[-tta-X][-tT][-aN][-cK].json (the suffixes only when TTA, threshold,
min area or min component differ from the predictor's) and RUN/report.md lists them all. An ensemble
(`ensemble=`, inference/ensemble.py) is scored into its first run as ensemble<N>-<checkpoint>-<split>....json.

`--choose CRITERION` (binary runs; evaluation/operating_points.py) picks the threshold, min area and
smallest component jointly from one pass over the set's probabilities; several criteria give a table
(``"operating_points"`` in the JSON, precision-recall and metric-against-threshold figures); `--save` with
one criterion writes it to RUN/operating-point.json, which predict, export, `Predictor.load` and later
evaluations then use. The sweeps come from the same pass and are exact (the accumulator's numbers).

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
from typing import Callable, Sequence

import numpy as np
import torch

from unetlab.data.formats.registry import load_for_config
from unetlab.data.dataset import ArrayDataset
from unetlab.data.splits import load_split, read_split_ids
from unetlab.errors import UnetlabError
from unetlab.evaluation.diagnostics import binary_diagnostics, check_worst, multiclass_diagnostics, report_section
from unetlab.evaluation.operating_points import (AREAS, OperatingPoint, OperatingPointSearch, parse_criteria,
                                                 scores as count_scores, with_min_area)
from unetlab.files import atomic_write_text
from unetlab.inference.ensemble import EnsemblePredictor, load_predictor
from unetlab.inference.predictor import Predictor, decoding_options, decoding_text
from unetlab.metrics import BinarySegmentationMetrics, image_iou, tgs_image_scores
from unetlab.run_folder import RunFolder
from unetlab.tasks import MulticlassTask
from unetlab.viz import (save_metrics_against_threshold, save_multiclass_samples, save_pr_curves,
                         save_prediction_grid, save_threshold_curve)

METRIC_NAMES = ("tgs_map", "iou", "dice", "precision", "recall", "pixel_accuracy", "mean_image_iou")
MULTICLASS_METRIC_NAMES = ("miou", "pixel_accuracy", "mean_accuracy", "mean_dice", "fw_iou")
SWEEP = [round(0.05 * k, 2) for k in range(1, 20)]
AREA_SWEEP = list(AREAS)  # eval.min_area values tried at the operating threshold
SWEEP_KEYS = ("precision", "recall", "iou", "dice", "tgs_map")
POINT_COLUMNS = {"precision": "precision", "recall": "recall", "F1": "dice", "IoU": "iou", "TGS": "tgs_map"}
OPTIMISTIC = "optimistic; choose on validation, report on held-out data"


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
    """One row of the predictions figure; foreground share and IoU over the pixels that count (not ignored)."""
    truth = dataset.masks[index]
    valid = None if dataset.valid is None else dataset.valid[index]
    counted = np.ones(truth.shape, bool) if valid is None else valid
    union = np.logical_or(truth, pred)[counted].sum()
    iou = np.logical_and(truth, pred)[counted].sum() / union if union else 1.0
    share = truth[counted].mean() if counted.any() else 0.0
    label = f"{group} {dataset.ids[index]}  foreground {share:.0%}  IoU {iou:.2f}"
    return {"image": dataset.images[index], "truth": truth, "prediction": pred, "probability": prob, "valid": valid,
            "label": label}


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


def _sweep(search: OperatingPointSearch, min_area: int, min_component: int) -> dict[str, list[float]]:
    """Metrics at every threshold of SWEEP under the operating image rules, read from the one pass."""
    scores = search.scores_at(SWEEP, min_area, min_component)
    return {"threshold": list(SWEEP), **{key: scores[key].tolist() for key in SWEEP_KEYS}}


def _area_sweep(search: OperatingPointSearch, threshold: float, min_component: int) -> dict[str, list[float]]:
    """Metrics at every eval.min_area of AREA_SWEEP, at the operating threshold and smallest component."""
    counts = search.counts_at([threshold], min_component)[0]
    rows = [count_scores(with_min_area(counts, area)) for area in AREA_SWEEP]
    return {"min_area": [float(a) for a in AREA_SWEEP],
            **{key: [float(row[key]) for row in rows] for key in ("precision", "recall", "iou", "tgs_map")}}


def _point_label(point: OperatingPoint) -> str:
    return (f"{point.criterion}: t {point.threshold:g}, area {point.min_area}, comp {point.min_component}"
            if point.unreachable is None else point.criterion)


def _point_lines(points: list[OperatingPoint], split: str, images: int) -> list[str]:
    """The log's table of operating points (criterion, threshold, min area, min component, metrics)."""
    width = max(len("criterion"), *(len(p.criterion) for p in points))
    lines = [f"operating points chosen on {split} ({images} images; scored on the same images: {OPTIMISTIC}):",
             f"{'criterion':<{width}}  threshold  min area  min comp  " + "  ".join(f"{c:>9}" for c in POINT_COLUMNS)]
    for p in points:
        if p.unreachable is not None:
            lines.append(f"{p.criterion:<{width}}  not reachable: {p.unreachable}")
            continue
        lines.append(f"{p.criterion:<{width}}  {p.threshold:>9g}  {p.min_area:>8}  {p.min_component:>8}  "
                     + "  ".join(f"{p.metrics[k]:>9.4f}" for k in POINT_COLUMNS.values()))
    return lines


def _point_figures(folder: RunFolder, tag: str, search: OperatingPointSearch, points: list[OperatingPoint]
                   ) -> list[Path]:
    """The precision-recall curve of salt pixels and the metrics against the threshold (threshold alone, no
    image rules), each with the chosen points marked."""
    curve = search.curve()
    reached = [p for p in points if p.unreachable is None]
    pr = save_pr_curves(folder.figure_path(f"precision-recall-{tag}.png"),
                        [("threshold alone (0.001 steps)", curve["recall"], curve["precision"])],
                        [(_point_label(p), p.metrics["recall"], p.metrics["precision"]) for p in reached],
                        title="precision-recall of salt pixels")
    against = save_metrics_against_threshold(
        folder.figure_path(f"operating-points-{tag}.png"), curve["threshold"],
        {name: curve[key] for name, key in POINT_COLUMNS.items()}, [(p.criterion, p.threshold) for p in reached])
    return [pr, against]


def _overlap(point: dict, data_root: str | Path, split: str) -> bool:
    """Whether the images a saved point was chosen on include some of these (same data, same or 'all' split)."""
    same_data = str(point.get("data")) == str(Path(data_root).resolve())
    return same_data and (point.get("split") == split or "all" in (point.get("split"), split))


def _save_point(folder: RunFolder, checkpoint: Path, which: str, epoch: int | None, point: OperatingPoint,
                chosen_on: dict, command: str) -> Path:
    if point.unreachable is not None:
        raise UnetlabError(f"--save {point.criterion}: {point.unreachable}; nothing saved (lower the bound or "
                           "choose another criterion)")
    return folder.write_operating_point({
        "threshold": point.threshold, "min_area": point.min_area, "min_component": point.min_component,
        "criterion": point.criterion, "checkpoint": which, "checkpoint_file": str(checkpoint),
        "checkpoint_epoch": epoch, "checkpoint_sha256": RunFolder.checkpoint_digest(checkpoint), **chosen_on,
        "metrics": point.metrics, "command": command})


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
             "| checkpoint | epoch | split | images | threshold | min area | min component | TTA | "
             + " | ".join(names) + " |",
             "|---" * (8 + len(names)) + "|"]
    for r in rows:
        values = " | ".join(f"{r['metrics'].get(k, float('nan')):.4f}" for k in names)
        threshold = "argmax" if r.get("task") == "multiclass" else f"{r['threshold']:g}"
        min_area = "-" if r.get("task") == "multiclass" else r.get("min_area", 0)
        min_component = "-" if r.get("task") == "multiclass" else r.get("min_component", 0)
        lines.append(f"| {r['checkpoint']} | {r['epoch']} | {r['split']} | {r['images']} | {threshold} | "
                     f"{min_area} | {min_component} | {r['tta']} | {values} |")
    lines += _ensemble_report(rows)
    if multiclass:
        lines += ["", "mIoU: mean over classes of TP / (TP + FP + FN) over all labelled pixels of the set (a class "
                  "in neither truth nor prediction is left out); ignored pixels count nowhere. Per-class IoU is in "
                  "each evaluation/*.json.", ""]
    else:
        lines += ["", "TGS metric: per image, precision averaged over IoU thresholds 0.50..0.95 (an image with no "
                  "salt scores 1 when nothing is predicted, else 0); mean over images. IoU, Dice, precision and "
                  "recall are over all salt pixels of the set; salt where probability > threshold, less the "
                  "connected components (8-connected) of fewer than 'min component' pixels, and none in an image "
                  "where fewer than 'min area' pixels are left.", ""]
        lines += _operating_point_report(rows)
    for r in rows:
        lines += report_section(r)
    for r in rows:
        lines.append(f"Command: `{r['command']}`")
    return atomic_write_text(folder.report_path, "\n".join(lines) + "\n")


PRECISION_RECALL = [
    "Precision of salt pixels: of all the pixels of the set predicted salt, the share that are salt, TP / (TP + "
    "FP), counted over every image together (not averaged per image). It falls when the model paints salt "
    "where there is none: false alarms on empty images, blobs beside a salt body, a border drawn too wide.", "",
    "Recall of salt pixels: of all the salt pixels of the set, the share predicted salt, TP / (TP + FN). It "
    "falls when salt is missed: bodies not found, borders drawn too tight. A lower threshold raises recall and "
    "lowers precision; the image-level rules raise precision at little cost in recall where the errors are "
    "small: removing components of fewer than K pixels drops speckle, and emptying images with fewer than N "
    "predicted pixels turns a few false pixels on an empty image (TGS score 0) into a perfect empty one "
    "(score 1), at the price of the salt of truly small bodies.", ""]


def _operating_point_report(rows: list[dict]) -> list[str]:
    """report.md: precision and recall explained, where each decoding came from, and every --choose table."""
    lines = list(PRECISION_RECALL)
    for r in rows:
        point = r.get("operating_point")
        if point:
            lines.append(f"`{r['checkpoint']}` on {r['split']}: decoded at the saved operating point "
                         f"`{point['criterion']}`, chosen on {point['split']} of `{point['data']}` "
                         f"({point['images']} images)."
                         + (f" **Warning: chosen on these images: {OPTIMISTIC}.**" if r.get("chosen_on_these")
                            else ""))
            lines.append("")
        table = r.get("operating_points")
        if not table:
            continue
        lines += [f"Operating points of `{r['checkpoint']}` chosen on {r['split']} ({r['images']} images of "
                  f"`{r['data']}`); **chosen on these images: {OPTIMISTIC}.**", "",
                  "| criterion | threshold | min area | min component | " + " | ".join(POINT_COLUMNS) + " |",
                  "|---" * (4 + len(POINT_COLUMNS)) + "|"]
        for p in table:
            if p["unreachable"]:
                lines.append(f"| {p['criterion']} | not reachable: {p['unreachable']} |"
                             + " |" * (2 + len(POINT_COLUMNS)))
                continue
            values = " | ".join(f"{p['metrics'][k]:.4f}" for k in POINT_COLUMNS.values())
            lines.append(f"| {p['criterion']} | {p['threshold']:g} | {p['min_area']} | {p['min_component']} | "
                         f"{values} |")
        lines.append("")
    return lines


def _ensemble_report(rows: list[dict]) -> list[str]:
    """report.md: every ensemble's member runs, and what of theirs it did not apply."""
    lines = []
    for r in rows:
        if r.get("members"):
            runs = ", ".join(f"`{m['checkpoint']}` (epoch {m['epoch']})" for m in r["members"])
            lines += ["", f"`{r['checkpoint']}` on {r['split']}: the mean probabilities of {len(r['members'])} "
                      f"checkpoints, decoded once: {runs}."] + [f"Note: {note}" for note in r.get("notes", [])]
    return lines


def _result_tag(predictor: Predictor, which: str, split: str, tta: str, threshold: float, min_area: int,
                min_component: int) -> str:
    """One result file per setting: non-default TTA, threshold, min area or min component get their own, so
    none overwrites another."""
    tag = f"{which}-{split}"
    if tta != predictor.config.eval.tta:
        tag += f"-tta-{tta}"
    if threshold != predictor.threshold:
        tag += f"-t{threshold:g}"
    if min_area != predictor.min_area:
        tag += f"-a{min_area}"
    if min_component != predictor.min_component:
        tag += f"-c{min_component}"
    return tag


def _figure_rows(predictor: Predictor, dataset: ArrayDataset, sets: dict[str, np.ndarray], split: str,
                 probs: list[np.ndarray], decoding: tuple[float, int, int, str], figure_samples: int) -> list[dict]:
    """Rows of the predictions figure: samples of the scored set (and of the training set when it is val)."""
    threshold, min_area, min_component, tta = decoding
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
            rows.append(_row(dataset, int(i), predictor.labels(prob, threshold, min_area, min_component).astype(bool),
                             prob, group))
    return rows


def _model_name(predictor: Predictor | EnsemblePredictor, which: str) -> str:
    """What results call the model: the checkpoint ('best'), or 'ensemble2-best', never taken for one model's."""
    return predictor.describe(which) if isinstance(predictor, EnsemblePredictor) else which


def _ensemble_fields(predictor: Predictor | EnsemblePredictor) -> dict:
    """An ensemble's members (first run first) and notes, for its evaluation JSON; nothing for one model."""
    if not isinstance(predictor, EnsemblePredictor):
        return {}
    return {"members": predictor.member_records(), "notes": predictor.notes}


def _validation_ids(checkpoint: Path) -> frozenset[str] | None:
    ids = read_split_ids(RunFolder.of(checkpoint).split_path)
    return None if ids is None else frozenset(ids[1])  # None: nothing says which images the run was validated on


def _check_shared_validation(ensemble: EnsemblePredictor, option: str) -> None:
    """Scoring an ensemble on the first run's validation split is fair only when every member was validated on
    (so trained without) the same images; k-fold models each hold out a different fold."""
    first = _validation_ids(ensemble.checkpoints[0])
    for path in ensemble.checkpoints[1:]:
        if first is None or _validation_ids(path) != first:
            raise UnetlabError(f"--split {option}: {RunFolder.of(ensemble.checkpoints[0]).path} and "
                               f"{RunFolder.of(path).path} have different validation splits ({RunFolder.SPLIT}), so "
                               "each member has seen other members' validation images in training; pass --split all "
                               "on held-out data instead")


def evaluate(run: str | Path, data_root: str | Path, split: str = "auto", threshold: float | None = None,
             tta: str | None = None, which: str = "best", figure_samples: int = 6,
             log: Callable[[str], None] = print, command: str | None = None,
             dataset: ArrayDataset | None = None, min_area: int | None = None, choose: list[str] | None = None,
             save: bool = False, min_component: int | None = None, worst: int = 8,
             ensemble: Sequence[str | Path] = ()) -> dict:
    """Score checkpoint `which` of `run` on `data_root`; write JSON, report.md and figures into the run.

    `ensemble`: more runs (or checkpoints) whose probabilities are averaged with `run`'s (inference/ensemble.py);
    the results go to `run`'s evaluation folder as ensemble<N>-<checkpoint>-<split>...json, listing every member.

    `choose`: criteria (evaluation/operating_points.py) whose operating points are chosen on this set;
    `save`: store the one chosen point in RUN/operating-point.json for this checkpoint; `worst`: how many of the
    worst images the gallery shows (evaluation/diagnostics.py)."""
    run = Path(run)
    check_worst(worst)
    criteria = parse_criteria(choose or [])
    if save and len(criteria) != 1:
        raise UnetlabError(f"--save stores one operating point: give exactly one --choose (got {len(criteria)})")
    if ensemble and save:
        raise UnetlabError("--save: an operating point belongs to one checkpoint, not to an ensemble; drop --save "
                           "(and give predict the chosen --threshold, --min-area, --min-component)")
    checkpoint = RunFolder.resolve_checkpoint(run, which)
    folder = RunFolder.of(checkpoint)
    run_dir = folder.path
    predictor = load_predictor(checkpoint, which, ensemble)
    name = _model_name(predictor, which)
    members = "".join(f" --ensemble {member}" for member in ensemble)
    if criteria and predictor.task.name != "binary":
        raise UnetlabError(f"--choose applies to binary runs (a threshold and image rules); this run is "
                           f"{predictor.task.name}, decoded by argmax: drop --choose")
    threshold, min_area, min_component = decoding_options(predictor, threshold, min_area, min_component)
    tta = predictor.config.eval.tta if tta is None else tta
    if dataset is None:
        dataset = load_for_config(predictor.config, data_root)
    asked = split
    split, sets = _choose_indices(folder, dataset, split)
    if isinstance(predictor, EnsemblePredictor) and split == "val":
        _check_shared_validation(predictor, asked)
    for note in _ensemble_fields(predictor).get("notes", []):
        log(f"note: {note}")
    indices = sets[split]
    if predictor.task.name == "multiclass":
        return _evaluate_multiclass(predictor, folder, dataset, data_root, split, sets, name, tta,
                                    figure_samples, log, command or f"unetlab evaluate {run} --data {data_root} "
                                    f"--split {split} --which {which}{members}", worst)
    probs = predictor.predict_proba([dataset.images[i] for i in indices], tta=tta)
    prob_t = torch.from_numpy(np.stack(probs))
    truth_t = torch.from_numpy(dataset.masks[indices])
    valid_t = None if dataset.valid is None else torch.from_numpy(dataset.valid[indices])
    metrics = BinarySegmentationMetrics(threshold, min_area, min_component)
    metrics.update(prob_t, truth_t, valid=valid_t)
    scores = metrics.compute()
    per_image = binary_per_image(metrics, [str(dataset.ids[i]) for i in indices])
    search = OperatingPointSearch(prob_t, truth_t, valid_t)  # the one pass: every sweep below reads from it
    sweep = _sweep(search, min_area, min_component)
    best_at = int(np.argmax(sweep["tgs_map"]))
    area_sweep = _area_sweep(search, threshold, min_component)
    best_area_at = int(np.argmax(area_sweep["tgs_map"]))
    points = search.choose(criteria) if criteria else []
    epoch = predictor.epoch
    command = command or (f"unetlab evaluate {run} --data {data_root} --split {split} --which {which}{members}"
                          + "".join(f" --choose '{c.text}'" for c in criteria) + (" --save" if save else ""))
    saved = predictor.operating_point
    at_saved = saved is not None and (threshold, min_area, min_component) == (
        saved["threshold"], saved["min_area"], saved["min_component"])

    tag = _result_tag(predictor, name, split, tta, threshold, min_area, min_component)
    save_threshold_curve(folder.figure_path(f"threshold-{tag}.png"), SWEEP, sweep["precision"], sweep["recall"],
                         sweep["tgs_map"], chosen=threshold)
    if points:
        _point_figures(folder, tag, search, points)
    rows = _figure_rows(predictor, dataset, sets, split, probs, (threshold, min_area, min_component, tta),
                        figure_samples)
    decoding = decoding_text(predictor, threshold, min_area, min_component)
    save_prediction_grid(folder.figure_path(f"predictions-{tag}.png"), rows,
                         title=f"{run_dir.name}: {name} checkpoint (epoch {epoch}), threshold {threshold:g}, "
                               f"TTA {tta}" + (f", min area {min_area}" if min_area else "")
                               + (f", min component {min_component}" if min_component else ""))
    result = {
        "run": str(run_dir), "checkpoint": name, "epoch": epoch, "data": str(data_root), "split": split,
        "images": int(len(indices)), "threshold": threshold, "tta": tta, "min_area": min_area,
        "min_component": min_component, "metrics": scores,
        "operating_point": {k: saved[k] for k in ("criterion", "data", "split", "images", "tta")} if at_saved else None,
        "chosen_on_these": bool(at_saved and _overlap(saved, data_root, split)),
        "sweep": sweep,
        "best_threshold_on_this_set": SWEEP[best_at],
        "min_area_sweep": area_sweep,
        "best_min_area_on_this_set": AREA_SWEEP[best_area_at],
        **({"operating_points": [p.as_dict() for p in points]} if points else {}),
        "command": command,
        **_ensemble_fields(predictor),
        "per_image": per_image,
    }
    result.update(binary_diagnostics(folder, tag, dataset, indices, per_image, worst, lambda images: [
        predictor.labels(p, threshold, min_area, min_component).astype(bool)
        for p in predictor.predict_proba(images, tta=tta)]))
    atomic_write_text(folder.evaluation_path(tag), result_json(result))
    write_report(folder.path)
    log(f"{name} checkpoint (epoch {epoch}) on {split} ({len(indices)} images), {decoding}, TTA {tta}: "
        + "  ".join(f"{k} {scores[k]:.4f}" for k in METRIC_NAMES))
    if result["chosen_on_these"]:
        log(f"warning: the operating point was chosen on these images: {OPTIMISTIC}")
    log(f"threshold sweep on this set: best TGS metric {sweep['tgs_map'][best_at]:.4f} at "
        f"{SWEEP[best_at]:.2f}; min-area sweep: best {area_sweep['tgs_map'][best_area_at]:.4f} at "
        f"{AREA_SWEEP[best_area_at]} px (tune both on validation data only)")
    for line in _point_lines(points, split, len(indices)) if points else []:
        log(line)
    if save:
        chosen_on = {"data": str(Path(data_root).resolve()), "split": split, "images": int(len(indices)), "tta": tta}
        path = _save_point(folder, checkpoint, which, epoch, points[0], chosen_on, command)
        log(f"saved {points[0].criterion} to {path}: predict, export and evaluate of {which}.pt now decode at "
            f"threshold {points[0].threshold:g}, min area {points[0].min_area}, min component "
            f"{points[0].min_component} (override with --threshold, --min-area, --min-component)")
    log(f"wrote {folder.report_path} and {RunFolder.FIGURES}/predictions-{tag}.png")
    return result


def _evaluate_multiclass(predictor: Predictor, folder: RunFolder, dataset: ArrayDataset, data_root: str | Path,
                         split: str, sets: dict[str, np.ndarray], which: str, tta: str, figure_samples: int,
                         log: Callable[[str], None], command: str, worst: int = 8) -> dict:
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
        **_ensemble_fields(predictor),
        "per_image": {"ids": [str(dataset.ids[i]) for i in indices], "confusion": per_image},
    }
    result.update(multiclass_diagnostics(folder, tag, dataset, indices, result["per_image"], confusion,
                                         task.class_names, task.palette or dataset.palette, worst, lambda images: [
                                             predictor.labels(p) for p in predictor.predict_proba(images, tta=tta)]))
    atomic_write_text(folder.evaluation_path(tag), result_json(result))
    write_report(folder.path)
    log(f"{which} checkpoint (epoch {predictor.epoch}) on {split} ({len(indices)} images), TTA {tta}: "
        + "  ".join(f"{k} {scores[k]:.4f}" for k in MULTICLASS_METRIC_NAMES))
    log(f"wrote {folder.report_path} and {RunFolder.FIGURES}/predictions-{tag}.png")
    return result
