"""`unetlab predict RUN IMAGE_OR_DIR... --out DIR`: a mask PNG and an overlay PNG per input image,
at the input's own size, plus predictions.csv in Kaggle's run-length format."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from unetlab.data.formats.tgs import IMAGE_SUFFIXES
from unetlab.data.io import read_image, save_png
from unetlab.data.rle import rle_encode
from unetlab.errors import UnetlabError
from unetlab.files import atomic_write_text
from unetlab.inference.predictor import Predictor, decoding_options
from unetlab.metrics import tag_safe_name
from unetlab.viz import colorize_labels, label_palette, save_overlay


def _blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Class colours laid over the image (grey or RGB) at `alpha`."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    return (rgb * (1 - alpha) + colours * alpha).round().astype(np.uint8)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not found:
                raise UnetlabError(f"{item}: no image files (.png, .jpg, .tif) in this folder")
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


def predict(run: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, threshold: float | None = None,
            tta: str | None = None, which: str = "best", batch_size: int = 32,
            log: Callable[[str], None] = print, min_area: int | None = None) -> list[Path]:
    """Predict every image in `inputs`; returns the mask paths written."""
    predictor = Predictor.load(run, which)
    threshold, min_area = decoding_options(predictor, threshold, min_area)
    files = collect_images(inputs)
    channels = predictor.config.model.in_channels
    multiclass = predictor.task.name == "multiclass"
    class_names = predictor.task.class_names
    palette = label_palette(len(class_names), predictor.task.palette)
    out_dir = Path(out_dir)
    written: list[Path] = []
    rle_rows: list[tuple[str, str]] = []
    chunk = max(batch_size * 8, 1)  # bounded memory for large folders
    for start in range(0, len(files), chunk):
        batch = files[start : start + chunk]
        images = [read_image(p, channels=channels) for p in batch]
        probs = predictor.predict_proba(images, batch_size=batch_size, tta=tta)
        for path, image, prob in zip(batch, images, probs):
            if multiclass:
                labels = predictor.labels(prob)
                written.append(save_png(out_dir / "masks" / f"{path.stem}.png", labels))  # class indices
                save_png(out_dir / "overlays" / f"{path.stem}.png", _blend(image, colorize_labels(labels, palette)))
                shares = np.bincount(labels.ravel(), minlength=len(class_names)) / labels.size
                rle_rows.append((path.stem, *(f"{share:.4f}" for share in shares)))
                continue
            mask = predictor.labels(prob, threshold, min_area).astype(bool)
            written.append(save_png(out_dir / "masks" / f"{path.stem}.png", mask))
            save_overlay(out_dir / "overlays" / f"{path.stem}.png", image, mask)
            rle_rows.append((path.stem, rle_encode(mask)))
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
    log(f"predicted {len(files)} image(s) at threshold {threshold:.2f}"
        + (f", min area {min_area} px" if min_area else "") + f": {salt} with salt; "
        f"masks in {out_dir / 'masks'}, overlays in {out_dir / 'overlays'}, RLE in {out_dir / 'predictions.csv'}")
    return written
