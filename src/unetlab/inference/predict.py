"""`unetlab predict RUN IMAGE_OR_DIR... --out DIR`: a mask PNG and an overlay PNG per input image,
at the input's own size, plus predictions.csv in Kaggle's run-length format; on request the
probabilities too (`probabilities/<stem>.npy` float32, or 16-bit PNGs scaled to 0..65535).

Images of any size: one larger than the run's tile (eval.tile, or `tile`) is predicted in
overlapping tiles (inference/tiling.py), alone, its outputs written before the next file is read;
smaller ones are read and predicted in chunks."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from unetlab.data.formats.tgs import IMAGE_SUFFIXES
from unetlab.data.io import read_image, save_png
from unetlab.data.rle import rle_encode
from unetlab.errors import UnetlabError
from unetlab.files import atomic_path, atomic_write_text
from unetlab.inference.predictor import Predictor, decoding_options, decoding_text
from unetlab.inference.segy import is_segy, predict_segy
from unetlab.inference.tiling import check_tiling
from unetlab.metrics import tag_safe_name
from unetlab.viz import colorize_labels, label_palette, save_overlay


PREDICT_SUFFIXES = IMAGE_SUFFIXES | {".npy"}
PROBABILITY_FORMATS = ("npy", "png16")


def _blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Class colours laid over the image (grey or RGB) at `alpha`."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    return (rgb * (1 - alpha) + colours * alpha).round().astype(np.uint8)


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


def predict(run: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, threshold: float | None = None,
            tta: str | None = None, which: str = "best", batch_size: int = 32,
            log: Callable[[str], None] = print, min_area: int | None = None,
            min_component: int | None = None, probabilities: str | None = None, tile: int | None = None,
            tile_overlap: int | None = None, segy: Mapping[str, Any] | None = None) -> list[Path]:
    """Predict every image in `inputs`; returns the mask paths written. `probabilities` (npy or png16)
    also writes them; `tile` / `tile_overlap` override the run's eval.tile / eval.tile_overlap. SEG-Y
    volumes among the inputs (.sgy, .segy) go to `inference.segy.predict_segy` with the options `segy`
    (axis, clip, clip_percentile, write, formats, previews, ...); their cubes are in the returned paths."""
    predictor = Predictor.load(run, which)
    if probabilities not in (None, *PROBABILITY_FORMATS):
        raise UnetlabError(f"--probabilities {probabilities}: choose {' or '.join(PROBABILITY_FORMATS)}")
    tile = predictor.config.eval.tile if tile is None else tile
    tile_overlap = predictor.config.eval.tile_overlap if tile_overlap is None else tile_overlap
    check_tiling(tile, tile_overlap)
    threshold, min_area, min_component = decoding_options(predictor, threshold, min_area, min_component)
    out_dir = Path(out_dir)
    written: list[Path] = []
    for volume in [Path(item) for item in inputs if is_segy(item)]:
        result = predict_segy(predictor, volume, out_dir, threshold=threshold, min_area=min_area,
                              min_component=min_component, tta=tta, tile=tile, tile_overlap=tile_overlap, log=log,
                              **dict(segy or {}))
        written += [Path(name) for name in result["files"]]
    inputs = [item for item in inputs if not is_segy(item)]
    if not inputs:
        return written
    files = collect_images(inputs)
    multiclass = predictor.task.name == "multiclass"
    class_names = predictor.task.class_names
    palette = label_palette(len(class_names), predictor.task.palette)
    rle_rows: list[tuple[str, str]] = []
    for batch, images, probs in _predicted(predictor, files, batch_size, tta, tile, tile_overlap):
        for path, image, prob in zip(batch, images, probs):
            if probabilities:
                save_probabilities(out_dir / "probabilities", path.stem, prob, probabilities, class_names)
            if multiclass:
                labels = predictor.labels(prob)
                written.append(save_png(out_dir / "masks" / f"{path.stem}.png", labels))  # class indices
                save_png(out_dir / "overlays" / f"{path.stem}.png", _blend(image, colorize_labels(labels, palette)))
                shares = np.bincount(labels.ravel(), minlength=len(class_names)) / labels.size
                rle_rows.append((path.stem, *(f"{share:.4f}" for share in shares)))
                continue
            mask = predictor.labels(prob, threshold, min_area, min_component).astype(bool)
            written.append(save_png(out_dir / "masks" / f"{path.stem}.png", mask))
            save_overlay(out_dir / "overlays" / f"{path.stem}.png", image, mask)
            rle_rows.append((path.stem, rle_encode(mask)))
        del images, probs, image, prob  # a large image and its probabilities go before the next file is read
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", *(f"share_{tag_safe_name(n)}" for n in class_names)] if multiclass else ["id", "rle_mask"])
    writer.writerows(rle_rows)
    atomic_write_text(out_dir / "predictions.csv", buffer.getvalue())
    if multiclass:
        log(f"predicted {len(files)} image(s) into {len(class_names)} classes; class-index masks in "
            f"{out_dir / 'masks'}, colour overlays in {out_dir / 'overlays'}, class shares in "
            f"{out_dir / 'predictions.csv'}")
        return written
    salt = sum(1 for _, rle in rle_rows if rle)
    log(f"predicted {len(files)} image(s) at {decoding_text(predictor, threshold, min_area, min_component)}: "
        f"{salt} with salt; "
        f"masks in {out_dir / 'masks'}, overlays in {out_dir / 'overlays'}, RLE in {out_dir / 'predictions.csv'}")
    return written
