"""`unetlab predict RUN IMAGE_OR_DIR... --out DIR`: a mask PNG and an overlay PNG per input image,
at the input's own size, plus predictions.csv in Kaggle's run-length format; on request the
probabilities too (`probabilities/<stem>.npy` float32, or 16-bit PNGs scaled to 0..65535).

Images of any size: one larger than the run's tile (eval.tile, or `tile`) is predicted in
overlapping tiles (inference/tiling.py), alone, its outputs written before the next file is read;
smaller ones are read and predicted in chunks. Overlays are drawn in bands of rows, so their
temporaries stay small; an image over the pixel limit (the run's data.max_pixels, or `max_pixels`)
is refused before it is decoded.

Predict never replaces a file it did not write: every output path is checked before anything is
written, and one that exists is refused unless `.unetlab-predict.json` in the output folder lists it
(predict's own earlier output) or `overwrite` is set. An output folder that holds the inputs, or
sits beside them (their parent, a masks folder next to them), is refused outright."""

from __future__ import annotations

import csv
import inspect
import io
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from unetlab.data.formats.tgs import IMAGE_SUFFIXES
from unetlab.data.io import pixel_limit, read_image, save_png
from unetlab.data.rle import rle_encode
from unetlab.errors import UnetlabError
from unetlab.files import atomic_path, atomic_write_text
from unetlab.inference.ensemble import EnsemblePredictor, load_predictor, run_records
from unetlab.inference.predictor import Predictor, decoding_options, decoding_text
from unetlab.inference.segy import is_segy, predict_segy
from unetlab.inference.tiling import check_tiling
from unetlab.metrics import tag_safe_name
from unetlab.viz import colorize_labels, label_palette, overlay_boundary


PREDICT_SUFFIXES = IMAGE_SUFFIXES | {".npy"}
PROBABILITY_FORMATS = ("npy", "png16")
MANIFEST = ".unetlab-predict.json"  # in --out: the files predict wrote there (relative paths), the latest one's runs
OUTPUT_FOLDERS = ("masks", "overlays", "probabilities", "previews")
BAND_PIXELS = 1 << 22  # overlays are drawn ~4 M pixels at a time: float temporaries of ~100 MB at any size


def _blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Class colours laid over the image (grey or RGB) at `alpha`."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    return (rgb * (1 - alpha) + colours * alpha).round().astype(np.uint8)


def _in_row_bands(draw: Callable[[np.ndarray, np.ndarray], np.ndarray], image: np.ndarray, labels: np.ndarray,
                  halo: int = 0) -> np.ndarray:
    """`draw(image, labels)` (an RGB uint8 picture of the same size) computed band by band of rows, each
    band with `halo` rows of context either side (for drawing that looks at neighbours)."""
    height, width = labels.shape
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, BAND_PIXELS // max(width, 1))
    for start in range(0, height, rows):
        end = min(start + rows, height)
        low, high = max(start - halo, 0), min(end + halo, height)
        out[start:end] = draw(image[low:high], labels[low:high])[start - low : end - low]
    return out


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.is_file() and p.suffix.lower() in PREDICT_SUFFIXES and not p.name.startswith("."))
            if not found:
                raise UnetlabError(f"{item}: no image files (.png, .jpg, .tif, .npy) in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise UnetlabError(f"{item}: no such image or folder")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems and stems[path.stem] != path:
            raise UnetlabError(f"{path}: same name as {stems[path.stem]}; outputs would collide, "
                               "predict them into different --out folders")
        stems[path.stem] = path
    return list(stems.values())


def _predicted(predictor: Predictor, files: list[Path], batch_size: int, tta: str | None, tile: int, overlap: int
               ) -> Iterator[tuple[list[Path], list[np.ndarray], list[np.ndarray]]]:
    """(paths, images, probabilities) in the order of `files`: images read one by one; one larger than
    the tile goes alone (after the smaller ones read before it), the others in chunks of 8 batches."""
    channels = predictor.config.model.in_channels
    chunk = max(batch_size * 8, 1)
    paths: list[Path] = []
    images: list[np.ndarray] = []

    def run(paths: list[Path], images: list[np.ndarray]):
        return paths, images, predictor.predict_proba(images, batch_size, tta, tile, overlap)

    for path in files:
        image = read_image(path, channels=channels)
        large = predictor.uses_tiles(image, tile)
        if paths and (large or len(paths) == chunk):
            yield run(paths, images)
            paths, images = [], []
        if large:
            yield run([path], [image])
        else:
            paths.append(path)
            images.append(image)
        del image  # a large image is released before the next file is read
    if paths:
        yield run(paths, images)


def save_probabilities(folder: Path, stem: str, prob: np.ndarray, fmt: str, class_names: Sequence[str]) -> None:
    """`prob` as `folder/<stem>.npy` (float32, (H, W) or (classes, H, W)), or 16-bit PNG scaled to 0..65535:
    `folder/<stem>.png` for binary runs, `folder/<class>/<stem>.png` per class for multiclass ones."""
    if fmt == "npy":
        with atomic_path(folder / f"{stem}.npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.asarray(prob, np.float32))
        return
    if prob.ndim == 2:
        save_png(folder / f"{stem}.png", np.round(prob * 65535.0).astype(np.uint16))
        return
    for name, plane in zip(class_names, prob):
        save_png(folder / tag_safe_name(name) / f"{stem}.png", np.round(plane * 65535.0).astype(np.uint16))


def _image_targets(out_dir: Path, files: list[Path], probabilities: str | None,
                   class_names: Sequence[str] | None) -> list[Path]:
    """Every file `predict` writes for these images; `class_names` for multiclass runs, else None (the
    probability names are `save_probabilities`')."""
    targets = [out_dir / "predictions.csv"]
    folder = out_dir / "probabilities"
    for stem in (path.stem for path in files):
        targets += [out_dir / "masks" / f"{stem}.png", out_dir / "overlays" / f"{stem}.png"]
        if probabilities == "npy":
            targets.append(folder / f"{stem}.npy")
        elif probabilities:
            targets += ([folder / tag_safe_name(name) / f"{stem}.png" for name in class_names] if class_names
                        else [folder / f"{stem}.png"])
    return targets


def _segy_targets(out_dir: Path, volume: Path, options: Mapping[str, Any]) -> list[Path]:
    """The files `predict_segy` writes for `volume` with `options` (its names: see its docstring)."""
    defaults = {name: p.default for name, p in inspect.signature(predict_segy).parameters.items()}
    chosen = {**defaults, **options}
    stem, write = f"{volume.stem}-salt", chosen["write"]
    targets = [out_dir / f"{stem}-{write}.{'sgy' if fmt == 'segy' else 'npy'}" for fmt in chosen["formats"]]
    targets += [out_dir / "previews" / f"{volume.stem}-{chosen['axis']}-{float(line):g}.png"
                for line in chosen["previews"]]
    return [*targets, out_dir / f"{stem}.json"]


def _check_out_dir(out_dir: Path, inputs: Sequence[str | Path], own: set[str]) -> None:
    """Refuse an --out that is a file, or a folder holding the inputs: an input folder, its parent (where
    its masks live), a folder beside it holding images (its masks), or one whose outputs land in it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UnetlabError(f"--out {out_dir}: is a file; --out names a folder for masks/, overlays/ and "
                           "predictions.csv")
    out = out_dir.resolve()
    for item in map(Path, inputs):
        folder = (item if item.is_dir() else item.parent).resolve()
        if out in (folder, folder.parent) or folder in (out / name for name in OUTPUT_FOLDERS):
            raise UnetlabError(f"--out {out_dir}: holds the input images ({folder}) or their masks; predict "
                               "into another folder")
        if out.parent == folder.parent and out.is_dir():
            images = sorted(p.name for p in out.iterdir() if p.is_file() and p.suffix.lower() in PREDICT_SUFFIXES
                            and p.name not in own)
            if images:
                raise UnetlabError(f"--out {out_dir}: sits beside the input folder {folder} and holds images "
                                   f"({images[0]}, ...), likely their masks; predict into another folder")


def _read_manifest(out_dir: Path) -> set[str]:
    try:
        return set(json.loads((out_dir / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()  # none (or unreadable): nothing in the folder counts as predict's own


def _claim_outputs(out_dir: Path, targets: Sequence[Path], overwrite: bool = False,
                   about: Mapping[str, Any] | None = None) -> None:
    """Refuse, before anything is written, a target that exists and is not predict's own (listed in the
    manifest) unless `overwrite`; then list every target in the manifest, so a rerun may replace them.
    `about` (the run(s) of this predict) is written into the manifest too, replacing an earlier one's."""
    own = _read_manifest(out_dir)
    names = [target.relative_to(out_dir).as_posix() for target in targets]
    for target, name in zip(targets, names):
        if not overwrite and name not in own and (target.exists() or target.is_symlink()):
            raise UnetlabError(f"{target}: already exists and unetlab predict did not write it; pass --overwrite "
                               "to replace it, or predict into another --out folder")
    if not own.issuperset(names) or about is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / MANIFEST, json.dumps({"written_by": "unetlab predict",
                                                          "files": sorted(own | set(names)), **(about or {})},
                                                         indent=1) + "\n")


def predict(run: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, threshold: float | None = None,
            tta: str | None = None, which: str = "best", batch_size: int = 32,
            log: Callable[[str], None] = print, min_area: int | None = None,
            min_component: int | None = None, probabilities: str | None = None, tile: int | None = None,
            tile_overlap: int | None = None, segy: Mapping[str, Any] | None = None, overwrite: bool = False,
            max_pixels: int | None = None, ensemble: Sequence[str | Path] = ()) -> list[Path]:
    """Predict every image in `inputs`; returns the mask paths written. `probabilities` (npy or png16)
    also writes them; `tile` / `tile_overlap` override the run's eval.tile / eval.tile_overlap. SEG-Y
    volumes among the inputs (.sgy, .segy) go to `inference.segy.predict_segy` with the options `segy`
    (axis, clip, clip_percentile, write, formats, previews, ...); their cubes are in the returned paths.
    Existing files are replaced only when predict wrote them or `overwrite` is set (module docstring);
    `max_pixels` overrides the run's data.max_pixels. `ensemble`: more runs (or checkpoints) whose
    probabilities are averaged with `run`'s (inference/ensemble.py); the manifest lists every run used."""
    predictor = load_predictor(run, which, ensemble)
    if probabilities not in (None, *PROBABILITY_FORMATS):
        raise UnetlabError(f"--probabilities {probabilities}: choose {' or '.join(PROBABILITY_FORMATS)}")
    tile = predictor.config.eval.tile if tile is None else tile
    tile_overlap = predictor.config.eval.tile_overlap if tile_overlap is None else tile_overlap
    check_tiling(tile, tile_overlap)
    threshold, min_area, min_component = decoding_options(predictor, threshold, min_area, min_component)
    out_dir = Path(out_dir)
    volumes = [Path(item) for item in inputs if is_segy(item)]
    inputs = [item for item in inputs if not is_segy(item)]
    multiclass = predictor.task.name == "multiclass"
    files = collect_images(inputs) if inputs else []
    _check_out_dir(out_dir, [*volumes, *inputs], _read_manifest(out_dir))
    targets = [target for volume in volumes for target in _segy_targets(out_dir, volume, dict(segy or {}))]
    if files:
        targets += _image_targets(out_dir, files, probabilities, predictor.task.class_names if multiclass else None)
    notes = predictor.notes if isinstance(predictor, EnsemblePredictor) else []
    _claim_outputs(out_dir, targets, overwrite, {"runs": run_records(predictor, run, which),
                                                 **({"notes": notes} if notes else {})})
    for note in notes:
        log(f"note: {note}")
    written: list[Path] = []
    for volume in volumes:
        result = predict_segy(predictor, volume, out_dir, threshold=threshold, min_area=min_area,
                              min_component=min_component, tta=tta, tile=tile, tile_overlap=tile_overlap, log=log,
                              **dict(segy or {}))
        written += [Path(name) for name in result["files"]]
    if not files:
        return written
    limit = predictor.config.data.max_pixels if max_pixels is None else max_pixels
    with pixel_limit(limit, "--max-pixels"):
        rows = _predict_images(predictor, files, out_dir, written, (threshold, min_area, min_component),
                               (batch_size, tta, tile, tile_overlap), probabilities)
    _write_csv(predictor, out_dir, rows, files, (threshold, min_area, min_component), log)
    return written


def _predict_images(predictor: Predictor, files: list[Path], out_dir: Path, written: list[Path],
                    decoding: tuple[float, int, int], views: tuple[int, str | None, int, int],
                    probabilities: str | None) -> list[tuple[str, ...]]:
    """Masks, overlays (and probabilities) of `files` into `out_dir`, mask paths appended to `written`;
    returns the CSV rows (id and RLE, or id and class shares)."""
    multiclass = predictor.task.name == "multiclass"
    class_names = predictor.task.class_names
    palette = label_palette(len(class_names), predictor.task.palette)
    rows: list[tuple[str, ...]] = []
    for batch, images, probs in _predicted(predictor, files, *views):
        for path, image in zip(batch, images):
            prob = probs.pop(0)  # released once decoded: a large image's overlay and RLE need room
            if probabilities:
                save_probabilities(out_dir / "probabilities", path.stem, prob, probabilities, class_names)
            if multiclass:
                labels = predictor.labels(prob)
                del prob
                written.append(save_png(out_dir / "masks" / f"{path.stem}.png", labels))  # class indices
                save_png(out_dir / "overlays" / f"{path.stem}.png",
                         _in_row_bands(lambda im, lab: _blend(im, colorize_labels(lab, palette)), image, labels))
                shares = np.bincount(labels.ravel(), minlength=len(class_names)) / labels.size
                rows.append((path.stem, *(f"{share:.4f}" for share in shares)))
                continue
            mask = predictor.labels(prob, *decoding).astype(bool)
            del prob
            written.append(save_png(out_dir / "masks" / f"{path.stem}.png", mask))
            # overlay_boundary erodes the mask by one pixel: one row of context keeps the bands seamless
            save_png(out_dir / "overlays" / f"{path.stem}.png", _in_row_bands(overlay_boundary, image, mask, halo=1))
            rows.append((path.stem, rle_encode(mask)))
        del images, image  # a large image goes before the next file is read
    return rows


def _write_csv(predictor: Predictor, out_dir: Path, rows: list[tuple[str, ...]], files: list[Path],
               decoding: tuple[float, int, int], log: Callable[[str], None]) -> None:
    """predictions.csv (Kaggle RLE, or class shares for multiclass runs) and the closing log line."""
    multiclass = predictor.task.name == "multiclass"
    class_names = predictor.task.class_names
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", *(f"share_{tag_safe_name(n)}" for n in class_names)] if multiclass else ["id", "rle_mask"])
    writer.writerows(rows)
    atomic_write_text(out_dir / "predictions.csv", buffer.getvalue())
    if multiclass:
        log(f"predicted {len(files)} image(s) into {len(class_names)} classes; class-index masks in "
            f"{out_dir / 'masks'}, colour overlays in {out_dir / 'overlays'}, class shares in "
            f"{out_dir / 'predictions.csv'}")
        return
    salt = sum(1 for _, rle in rows if rle)
    log(f"predicted {len(files)} image(s) at {decoding_text(predictor, *decoding)}: {salt} with salt; "
        f"masks in {out_dir / 'masks'}, overlays in {out_dir / 'overlays'}, RLE in {out_dir / 'predictions.csv'}")
