"""Every figure lives here; computing metrics does not.

Functions take numpy arrays (images uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB, masks bool
``(H, W)``, probabilities float ``(H, W)`` in ``[0, 1]``) and write PNG files. Callers pass in
numbers they already computed (labels, precision/recall, metric rows); nothing here scores a
prediction.

Rendering uses matplotlib's object API (``Figure`` + ``FigureCanvasAgg``) and never pyplot: no
global figure registry, so nothing leaks, it is safe from worker threads, and it never opens a
display. We deliberately do not call ``matplotlib.use("Agg")``: the Agg canvas is attached to each
figure explicitly, and switching the global backend on import would close the figures of a user
who imported unetlab into a notebook.

Every ``save_*`` writes through :func:`unetlab.files.atomic_path` (a temporary
``.<name>.<unique>.tmp.png`` next to the target, then renamed onto it), so a reader (TensorBoard, a
browser refreshing, a crashed run) never sees a half-written PNG. Parent folders are created. Nothing
here reads a run folder: `unetlab.evaluation.curves` reads runs and calls :func:`save_run_curves`.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import AutoLocator, MaxNLocator
from PIL import Image

from unetlab.files import atomic_path

__all__ = [
    "boundary",
    "overlay_boundary",
    "save_overlay",
    "save_prediction_grid",
    "save_learning_curves",
    "save_run_curves",
    "save_threshold_curve",
    "save_sample_grid",
    "label_palette",
    "colorize_labels",
    "save_multiclass_samples",
    "save_band_curves",
    "save_pr_curves",
    "save_variant_predictions",
    "error_map",
    "save_error_gallery",
    "save_confusion_matrix",
]

DPI = 100
TRUTH_COLOR = "#2ca02c"  # green: ground truth contour
PRED_COLOR = "#ff2828"  # red: predicted contour, matches overlay_boundary's default colour
IGNORED_GREY = (128, 128, 128)  # binary figures: pixels under the ignore label (neither foreground nor background)
_GRID_COLUMNS = ("image", "truth", "prediction", "probability")
# history columns that are the x axis or bookkeeping, not metrics worth a panel
_NOT_METRICS = {"epoch", "step", "global_step", "time", "wall_time", "timestamp"}


# --------------------------------------------------------------------------- array helpers


def _as_image(image: np.ndarray) -> np.ndarray:
    """uint8 (H,W) or (H,W,3); lenient so a float tensor dump or a 0/1 array also works."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]  # alpha is meaningless for a figure of the scene
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"image must be (H, W) grey or (H, W, 3) RGB, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    # floats in [0, 1] are the usual normalised form; anything else is taken as 0..255
    if np.issubdtype(np.asarray(image).dtype, np.floating) and finite.size and finite.max() <= 1.0 and finite.min() >= 0.0:
        arr = arr * 255.0
    return np.clip(np.nan_to_num(np.rint(arr)), 0, 255).astype(np.uint8)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    arr = _as_image(image)
    return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr


def _as_mask(mask: np.ndarray, shape: tuple[int, ...] | None = None, what: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (H, W), got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape[:2]):
        raise ValueError(f"{what} shape {arr.shape} does not match image shape {tuple(shape[:2])}")
    return arr != 0  # 0/1, 0/255 and bool masks all mean the same thing


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbourhood erosion; outside the image counts as mask so edges do not erode."""
    p = np.pad(mask, 1, mode="constant", constant_values=True)
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


# --------------------------------------------------------------------------- pixel overlays


def boundary(mask: np.ndarray) -> np.ndarray:
    """bool (H,W): pixels of the mask that touch a non-mask pixel (4-neighbourhood); pure numpy.

    Pixels beyond the image edge count as mask, so a mask pixel on the image edge is boundary
    only if it touches a non-mask pixel inside the image: a full mask has no boundary, and a salt
    body cut by the image edge is not outlined along the cut (the edge is the crop, not salt).
    """
    m = _as_mask(mask)
    return m & ~_erode(m)


def overlay_boundary(
    image: np.ndarray,
    mask: np.ndarray,
    color: Sequence[int] = (255, 40, 40),
    fill_alpha: float = 0.25,
    thickness: int = 1,
) -> np.ndarray:
    """RGB uint8 (H,W,3): the image (grey expanded to RGB) with the mask's boundary drawn in `color`
    and its interior tinted with `fill_alpha` (0 = no tint). Same size as the input (this is what
    `predict` writes as the overlay PNG at the input's original size).

    `thickness` > 1 thickens the boundary inwards (it stays inside the mask), for large photos
    where a 1-pixel line vanishes when the PNG is viewed scaled down.
    """
    rgb = _as_rgb(image)
    m = _as_mask(mask, rgb.shape)
    col = np.asarray(color, dtype=np.float64).reshape(-1)
    if col.size != 3 or np.any(col < 0) or np.any(col > 255):
        raise ValueError(f"color must be three values in 0..255, got {color!r}")
    if not 0.0 <= float(fill_alpha) <= 1.0:
        raise ValueError(f"fill_alpha must be in [0, 1], got {fill_alpha}")
    if int(thickness) < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}")
    inner = m
    for _ in range(int(thickness)):
        inner = _erode(inner)
    edge = m & ~inner
    out = rgb.astype(np.float64)
    if fill_alpha > 0:
        out[inner] = (1.0 - fill_alpha) * out[inner] + fill_alpha * col
    out[edge] = col
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- file writing


def _save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(fig)  # attach Agg explicitly: never a GUI canvas, no pyplot state
    # format given explicitly because the temp name, not the user's, decides the suffix
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return Path(path)


def save_overlay(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray, **kw) -> Path:
    """Write `overlay_boundary(image, mask, **kw)` with Pillow: exactly the image's pixel size."""
    rgb = overlay_boundary(image, mask, **kw)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(path)


# --------------------------------------------------------------------------- axes helpers


def _plain(ax) -> None:
    """Image axes: no ticks, thin grey frame (keeps ylabel usable, unlike axis('off'))."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.75")
        spine.set_linewidth(0.6)


def _interp(shape: tuple[int, ...], cell_px: float) -> str:
    # nearest keeps 101x101 seismic pixels crisp when enlarged; big photos need antialiasing
    return "nearest" if max(shape[:2]) <= cell_px else "auto"


def _show_image(ax, image: np.ndarray, cell_px: float) -> None:
    img = _as_image(image)
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation=_interp(img.shape, cell_px))
    else:
        ax.imshow(img, interpolation=_interp(img.shape, cell_px))


def _contour(ax, mask: np.ndarray, color: str, linewidth: float = 1.3) -> None:
    # contour lines stay visible at any zoom, unlike 1-pixel boundaries in a resampled image;
    # constant masks have no level-0.5 line and would only produce a warning
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=linewidth)


def _tint(ax, mask: np.ndarray, color: str, alpha: float) -> None:
    if alpha > 0 and mask.any():
        from matplotlib.colors import to_rgba

        rgba = np.zeros(mask.shape + (4,), dtype=np.float32)
        rgba[mask] = to_rgba(color, alpha)
        ax.imshow(rgba, interpolation="nearest")


def _blank(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="0.5", transform=ax.transAxes)
    ax.set_facecolor("0.96")


def _wrap_label(label: str, width: int = 22) -> str:
    # labels like 'train 1a2b3c  cov 34%  IoU 0.81': double spaces separate fields, one per line
    parts = [p.strip() for p in str(label).split("  ") if p.strip()]
    return "\n".join(line for p in parts for line in textwrap.wrap(p, width) or [""])


def _cell_height(image: np.ndarray, cell_w: float) -> float:
    # photos keep their aspect, within reason
    return float(np.clip(cell_w * image.shape[0] / image.shape[1], 0.8, 3.0))


def _label_margin(labels: Sequence[str], widest: float, empty: float) -> float:
    """Inches left of the first column for wrapped row labels (`empty` when there are none)."""
    longest = max((len(line) for lab in labels for line in lab.split("\n")), default=0)
    return min(0.2 + 0.07 * longest, widest) if longest else empty  # ~0.07 in per 8-pt character


# --------------------------------------------------------------------------- figures


def _grid_columns(rows: Sequence[Mapping], columns: Sequence[str]) -> list[str]:
    cols = list(columns)
    if any(r.get("probability") is not None for r in rows) and "probability" not in cols:
        cols.append("probability")
    unknown = [c for c in cols if c not in _GRID_COLUMNS]
    if unknown:
        raise ValueError(f"unknown columns {unknown}; choose from {list(_GRID_COLUMNS)}")
    return cols


@dataclass(frozen=True)
class _GridLayout:
    """The prediction grid's geometry in inches. Manual, not constrained layout: constrained layout misplaces
    text outside equal-aspect image axes (row labels and the colour bar got clipped), and fixed cells keep
    images big for any row count."""

    nrows: int
    ncols: int
    cell_w: float
    cell_h: float
    gap: float
    left: float
    top: float
    fig_w: float
    fig_h: float
    bar_row: int | None  # the colour bar goes beside the first row that has a map, right of the last column

    @property
    def cell_px(self) -> float:
        return self.cell_w * DPI

    def cell_box(self, i: int, j: int) -> tuple[float, float, float, float]:
        """Axes rectangle of row i, column j in figure fractions."""
        y0 = self.fig_h - self.top - (i + 1) * self.cell_h - i * self.gap
        x0 = self.left + j * (self.cell_w + self.gap)
        return (x0 / self.fig_w, y0 / self.fig_h, self.cell_w / self.fig_w, self.cell_h / self.fig_h)

    def bar_x(self) -> float:
        """Left edge of the colour bar in figure fractions, just right of the last column."""
        return (self.left + self.ncols * (self.cell_w + self.gap) - self.gap + 0.06) / self.fig_w


def _grid_layout(rows: Sequence[Mapping], cols: Sequence[str], labels: Sequence[str], title: str | None) -> _GridLayout:
    cell_w, gap, bottom = 1.9, 0.06, 0.1
    cell_h = _cell_height(_as_image(rows[0]["image"]), cell_w)
    left = _label_margin(labels, 2.5, 0.1)
    bar_row = next((i for i, r in enumerate(rows) if r.get("probability") is not None), None)
    right = 0.55 if bar_row is not None and "probability" in cols else 0.1  # room for its ticks
    top = 0.5 + (0.3 if title else 0.0)  # two-line column titles, then the figure title
    fig_w = left + len(cols) * cell_w + (len(cols) - 1) * gap + right
    fig_h = top + len(rows) * cell_h + (len(rows) - 1) * gap + bottom
    return _GridLayout(len(rows), len(cols), cell_w, cell_h, gap, left, top, fig_w, fig_h, bar_row)


@dataclass(frozen=True)
class _GridRow:
    """One row of the prediction grid, checked against its image's size."""

    image: np.ndarray
    truth: np.ndarray | None
    prediction: np.ndarray | None
    probability: np.ndarray | None  # as given; checked against the image when drawn
    ignored: np.ndarray | None  # pixels outside the row's valid mask (the ignore label), or None

    @classmethod
    def of(cls, row: Mapping) -> _GridRow:
        img = _as_image(row["image"])
        truth, pred, valid = row.get("truth"), row.get("prediction"), row.get("valid")
        ignored = None if valid is None else ~_as_mask(valid, img.shape, "valid")
        return cls(img, None if truth is None else _as_mask(truth, img.shape, "truth"),
                   None if pred is None else _as_mask(pred, img.shape, "prediction"), row.get("probability"),
                   ignored if ignored is not None and ignored.any() else None)


# One drawer per grid column. Each returns the colour-mapped image for the colour bar, or None.
def _grid_image(ax, row: _GridRow, cell_px: float):
    _show_image(ax, row.image, cell_px)


def _grid_truth(ax, row: _GridRow, cell_px: float):
    if row.truth is None:
        _blank(ax, "no ground truth")
        return
    rgb = np.where(row.truth[..., None], 255, 0).repeat(3, axis=2).astype(np.uint8)
    if row.ignored is not None:  # ignored pixels are neither salt nor background: grey, as in the error maps
        rgb[row.ignored] = IGNORED_GREY
    ax.imshow(rgb, interpolation="nearest")


def _grid_prediction(ax, row: _GridRow, cell_px: float):
    # the predicted area tinted and outlined in red, the truth outlined in green: misses and false alarms at a glance
    _show_image(ax, row.image, cell_px)
    if row.prediction is not None:
        _tint(ax, row.prediction, PRED_COLOR, 0.22)
        _contour(ax, row.prediction, PRED_COLOR)
    if row.truth is not None:
        _contour(ax, row.truth, TRUTH_COLOR)
    if row.ignored is not None:  # not scored: veiled in grey, whatever was predicted there
        _tint(ax, row.ignored, "#808080", 0.7)  # IGNORED_GREY
    if row.prediction is None:
        ax.text(0.5, 0.03, "no prediction", ha="center", va="bottom", fontsize=7, color="yellow",
                transform=ax.transAxes)


def _grid_probability(ax, row: _GridRow, cell_px: float):
    if row.probability is None:
        _blank(ax, "no probability")
        return None
    p = np.asarray(row.probability, dtype=np.float32)
    if p.shape != row.image.shape[:2]:
        raise ValueError(f"probability shape {p.shape} does not match image shape {row.image.shape[:2]}")
    return ax.imshow(p, cmap="viridis", vmin=0.0, vmax=1.0, interpolation=_interp(p.shape, cell_px))


_GRID_DRAW = {"image": _grid_image, "truth": _grid_truth, "prediction": _grid_prediction,
              "probability": _grid_probability}
_GRID_TITLES = {"image": "image", "truth": "ground truth", "prediction": "prediction (red)\ntruth contour (green)",
                "probability": "probability"}


def _grid_colour_bar(fig: Figure, ax, shown, layout: _GridLayout) -> None:
    # one small bar beside one row: a full-height bar on a 16-row figure is absurd
    pos = ax.get_position()
    cax = fig.add_axes((layout.bar_x(), pos.y0, 0.1 / layout.fig_w, pos.height))
    cb = fig.colorbar(shown, cax=cax, ticks=[0, 0.5, 1])
    cb.ax.tick_params(labelsize=7)


def save_prediction_grid(
    path: str | os.PathLike,
    rows: Sequence[Mapping],
    title: str | None = None,
    columns: Sequence[str] = ("image", "truth", "prediction"),
) -> Path:
    """The seeds' figure: one row per sample, columns image / ground truth / prediction side by side.

    Each row: ``{'image': arr, 'truth': bool mask or None, 'prediction': bool mask,
    'probability': optional float map in [0, 1], 'valid': optional bool mask of the pixels that count,
    'label': optional str}``.

    - image: grey images in 'gray' (0..255), RGB as is;
    - truth: the ground-truth mask (white = salt); "no ground truth" when None; pixels outside
      ``valid`` (the ignore label, e.g. the Oxford Pet trimap's border) grey, not background;
    - prediction: the image with the predicted area tinted red, the predicted contour in red and
      the truth contour in green, so misses and false alarms are visible at a glance; pixels outside
      ``valid`` veiled in grey;
    - probability: added automatically when any row has one ('viridis', fixed 0..1, colour bar on
      the first row that has a map).

    Column titles on the first row, each row's label to its left. Any number of rows.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("save_prediction_grid needs at least one row")
    cols = _grid_columns(rows, columns)
    labels = [_wrap_label(r["label"]) if r.get("label") else "" for r in rows]
    layout = _grid_layout(rows, cols, labels, title)
    fig = Figure(figsize=(layout.fig_w, layout.fig_h))
    # all axes first, then the drawing: the colour bar's axes come after them
    axes = [[fig.add_axes(layout.cell_box(i, j)) for j in range(len(cols))] for i in range(len(rows))]
    for i, row in enumerate(rows):
        cells = _GridRow.of(row)
        for j, col in enumerate(cols):
            ax = axes[i][j]
            _plain(ax)
            shown = _GRID_DRAW[col](ax, cells, layout.cell_px)
            if shown is not None and i == layout.bar_row:
                _grid_colour_bar(fig, ax, shown, layout)
            if i == 0:
                ax.set_title(_GRID_TITLES[col], fontsize=9)
        if labels[i]:
            axes[i][0].text(-0.08 / layout.cell_w, 0.5, labels[i], ha="right", va="center", fontsize=8,
                            transform=axes[i][0].transAxes)
    if title:
        fig.suptitle(title, fontsize=11, y=1.0 - 0.08 / layout.fig_h, va="top")
    return _save_figure(fig, path)


def _to_float(value) -> float:
    # metrics.csv rows read with csv.DictReader are strings; blanks mean "not logged this epoch"
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _family(key: str) -> str:
    """'train/loss', 'val/loss', 'train/dice_loss' -> 'loss'; 'val/tgs_map' -> 'tgs_map'; lr -> 'lr'."""
    name = key.rsplit("/", 1)[-1]
    if "loss" in name.lower():
        return "loss"
    if name.lower() in {"lr", "learning_rate"} or name.lower().startswith("lr"):
        return "lr"
    return name


def _panel_axes(count: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A grid of `count` panels, 2x2 for four (beats 3+1 with a hole), else up to 3 per row."""
    ncols = 2 if count == 4 else min(3, count)
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes


def _finish_curve_panel(ax, title: str, xs: np.ndarray, time_axis: bool = False) -> None:
    """Title, x label and ticks, grid and legend of one learning-curve panel."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("time (min)" if time_axis else "epoch", fontsize=9)
    if not time_axis:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if xs.size and xs.min() == xs.max():  # one point: matplotlib would zoom to a meaningless range
        pad = max(abs(xs.min()) * 0.1, 0.1) if time_axis else 1.0
        ax.set_xlim(xs.min() - pad, xs.max() + pad)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def save_learning_curves(
    path: str | os.PathLike,
    history: Sequence[Mapping],
    keys: Sequence[str] | None = None,
) -> Path:
    """Learning curves from the rows of metrics.csv (dicts with 'epoch' and float or string columns).

    One panel per metric family: all losses together (train/* and val/*), each other metric (its
    train/ and val/ versions together), the learning rate last on a log scale. Missing, blank and
    NaN values are skipped (lines join across them). `keys` restricts which columns are plotted.
    Empty history writes a placeholder figure rather than failing a training run.
    """
    history = list(history)
    if keys is None:
        seen: dict[str, None] = {}
        for row in history:
            for k in row:
                if k not in _NOT_METRICS:
                    seen.setdefault(k, None)
        keys = list(seen)
    epochs = np.array(
        [_to_float(r.get("epoch", i + 1)) for i, r in enumerate(history)], dtype=np.float64
    )
    if np.isnan(epochs).any():
        epochs = np.arange(1, len(history) + 1, dtype=np.float64)

    families: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for key in keys:
        y = np.array([_to_float(r.get(key)) for r in history], dtype=np.float64)
        ok = np.isfinite(y)
        if ok.any():
            families.setdefault(_family(key), []).append((key, epochs[ok], y[ok]))
    # losses first, learning rate last, other metrics in the order they were logged
    order = (["loss"] if "loss" in families else []) + [f for f in families if f not in ("loss", "lr")]
    order += ["lr"] if "lr" in families else []

    if not order:
        fig = Figure(figsize=(4, 2.5))
        fig.text(0.5, 0.5, "no metrics to plot yet", ha="center", va="center", color="0.4")
        return _save_figure(fig, path)

    fig, axes = _panel_axes(len(order), 4.2, 3.0)
    split_color = {"train": "C0", "val": "C1"}
    for ax, fam in zip(axes, order):
        series = families[fam]
        splits = [key.split("/", 1)[0] if "/" in key else "" for key, _, _ in series]
        # train blue / val orange in every panel, unless a panel holds several train (or val) series
        by_split = len(set(splits)) == len(splits)
        for n, ((key, x, y), split) in enumerate(zip(series, splits)):
            color = split_color.get(split, f"C{2 + n}") if by_split else f"C{n}"
            style = "--" if split == "train" else "-"  # val solid: it is what we select on
            ax.plot(x, y, style, color=color, marker="o" if len(x) <= 30 else None, markersize=3,
                    linewidth=1.4, label=key)
        if fam == "lr":
            ys = np.concatenate([y for _, _, y in families[fam]])
            if (ys > 0).all():
                ax.set_yscale("log")
        _finish_curve_panel(ax, "learning rate" if fam == "lr" else fam, np.concatenate([x for _, x, _ in series]))
    return _save_figure(fig, path)


def save_run_curves(
    path: str | os.PathLike,
    runs: Sequence[tuple[str, Sequence[Mapping]]],
    panels: Sequence[str],
    x: str = "epoch",
) -> Path:
    """Learning curves of several runs in one PNG: one panel per name in `panels`, one colour per run.

    `runs`: (label, rows of metrics.csv) per run. A panel is a column, or ``loss`` for train/loss
    (dashed) and val/loss (solid) together; ``lr`` gets a log axis when every value is positive.
    `x` is ``epoch``, or ``time`` in minutes from the rows' ``time_s`` seconds. Blank and NaN values
    are skipped. Choosing the panels (and reading the runs) is the caller's business.
    """
    def series(rows: Sequence[Mapping], column: str) -> tuple[np.ndarray, np.ndarray]:
        xs = np.array([_to_float(r.get("time_s" if x == "time" else "epoch")) for r in rows], dtype=np.float64)
        if x == "time":
            xs = xs / 60.0
        ys = np.array([_to_float(r.get(column)) for r in rows], dtype=np.float64)
        ok = np.isfinite(xs) & np.isfinite(ys)
        return xs[ok], ys[ok]

    fig, axes = _panel_axes(len(panels), 4.4, 3.2)
    for ax, panel in zip(axes, panels):
        columns = [("train/loss", "--", " train"), ("val/loss", "-", " val")] if panel == "loss" else [(panel, "-", "")]
        all_x, all_y = [], []
        for n, (label, rows) in enumerate(runs):
            for column, style, suffix in columns:
                xs, ys = series(rows, column)
                if xs.size == 0:
                    continue
                ax.plot(xs, ys, style, color=f"C{n % 10}", marker="o" if xs.size <= 30 else None, markersize=3,
                        linewidth=1.4, label=label + (suffix if len(columns) > 1 else ""))
                all_x.append(xs)
                all_y.append(ys)
        if panel == "lr" and all_y and (np.concatenate(all_y) > 0).all():
            ax.set_yscale("log")
        _finish_curve_panel(ax, "learning rate" if panel == "lr" else panel,
                            np.concatenate(all_x) if all_x else np.empty(0), time_axis=x == "time")
    return _save_figure(fig, path)


def save_threshold_curve(
    path: str | os.PathLike,
    thresholds: Sequence[float],
    precision: Sequence[float],
    recall: Sequence[float],
    tgs_map: Sequence[float] | None = None,
    chosen: float | None = None,
) -> Path:
    """Precision and recall of salt pixels (and the TGS metric if given) against the probability
    threshold, with a vertical line at the chosen threshold. NaN points (e.g. precision with no
    predicted pixels) are skipped."""
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    curves = [("precision", precision, "C0"), ("recall", recall, "C1")]
    if tgs_map is not None:
        curves.append(("TGS mAP", tgs_map, "C2"))
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    for name, values, color in curves:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.shape != t.shape:
            raise ValueError(f"{name} has {v.size} values but there are {t.size} thresholds")
        ok = np.isfinite(v) & np.isfinite(t)
        ax.plot(t[ok], v[ok], color=color, marker="o" if ok.sum() <= 30 else None, markersize=3,
                linewidth=1.6, label=name)
    if chosen is not None:
        ax.axvline(float(chosen), color="0.2", linestyle="--", linewidth=1.2, label=f"chosen {float(chosen):.2f}")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("probability threshold")
    ax.set_ylabel("score (salt pixels)")
    ax.set_title("threshold sweep", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save_figure(fig, path)


def save_sample_grid(
    path: str | os.PathLike,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    labels: Sequence[str] | None = None,
    ncols: int = 6,
) -> Path:
    """A grid of images with mask boundaries overlaid (red contour, light tint), for data previews
    such as synthetic data. A mask may be None (image shown alone)."""
    images = list(images)
    masks = list(masks)
    if not images:
        raise ValueError("save_sample_grid needs at least one image")
    if len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    first = _as_image(images[0])
    cell_w = 1.7
    cell_h = float(np.clip(cell_w * first.shape[0] / first.shape[1], 0.8, 3.0))
    fig = Figure(figsize=(cell_w * ncols + 0.2, (cell_h + (0.3 if labels else 0.05)) * nrows + 0.1), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for k, ax in enumerate(axes):
        if k >= len(images):
            ax.set_visible(False)
            continue
        _plain(ax)
        img = _as_image(images[k])
        _show_image(ax, img, cell_w * DPI)
        if masks[k] is not None:
            m = _as_mask(masks[k], img.shape)
            _tint(ax, m, PRED_COLOR, 0.18)
            _contour(ax, m, PRED_COLOR, linewidth=1.1)
        if labels is not None:
            ax.set_title(textwrap.shorten(str(labels[k]), 28, placeholder="…"), fontsize=8)
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- label maps (multiclass)

# A data set's own class colours come with it (`ArrayDataset.palette`, e.g. SegNet's CamVid colours from
# unetlab.data.formats.camvid); these functions take them as `palette` and otherwise use generic colours.
IGNORE_COLOR = (0, 0, 0)  # ignored pixels in label maps; no palette colour is black
_MAX_PALETTE = (1 << 24) - 1


def _bitmap_palette(indices: np.ndarray) -> np.ndarray:
    """Pascal VOC's colour map: the bits of each index spread over R, G, B from the top bit down.
    Injective for indices below 2**24; index 0 is black."""
    idx = indices.astype(np.int64)
    out = np.zeros(idx.shape + (3,), dtype=np.int64)
    for j in range(8):
        for ch in range(3):
            out[..., ch] |= ((idx >> (3 * j + ch)) & 1) << (7 - j)
    return out.astype(np.uint8)


def label_palette(num_classes: int, palette: Sequence[Sequence[int]] | np.ndarray | None = None) -> np.ndarray:
    """uint8 (C, 3): one colour per class, the same every call.

    ``palette``: the data set's own colours (one (r, g, b) of 0..255 per class, e.g.
    ``ArrayDataset.palette``), returned as an array. None: generic colours, distinct for any
    C < 2**24 and never black (black is :data:`IGNORE_COLOR`, for ignored pixels): the Pascal VOC
    colour map shifted by one (class k gets VOC's colour for index k + 1, so class 0 is not black);
    class k keeps its colour as C grows.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    if not 1 <= int(num_classes) <= _MAX_PALETTE:
        raise ValueError(f"num_classes must be in 1..{_MAX_PALETTE}, got {num_classes}")
    if palette is None:
        return _bitmap_palette(np.arange(1, int(num_classes) + 1))
    pal = np.asarray(palette)
    if pal.shape != (int(num_classes), 3):
        raise ValueError(f"palette must hold one (r, g, b) per class, shape ({num_classes}, 3); got {pal.shape}")
    if pal.dtype.kind not in "ui" or np.any(pal < 0) or np.any(pal > 255):
        raise ValueError("palette values must be integers in 0..255")
    return pal.astype(np.uint8)


def colorize_labels(mask: np.ndarray, palette: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3): each pixel of the class-index ``mask`` (H, W) in its ``palette`` colour
    ((C, 3), 0..255), pixels equal to ``ignore_index`` black.

    Integer, bool (0/1) or float masks (rounded: augmented label maps). A value that is neither a
    class 0..C-1 nor ``ignore_index`` (e.g. 255 without ``ignore_index=255``) is a ValueError.
    """
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3 or pal.shape[0] == 0:
        raise ValueError(f"palette must be (C, 3) with C >= 1, got shape {pal.shape}")
    if np.any(pal < 0) or np.any(pal > 255):
        raise ValueError("palette values must be in 0..255")
    pal = pal.astype(np.uint8)
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim != 2:
        raise ValueError(f"label mask must be 2-D (H, W), got shape {m.shape}")
    if m.dtype == bool:
        m = m.astype(np.int64)
    elif np.issubdtype(m.dtype, np.floating):
        m = np.rint(m)
    elif not np.issubdtype(m.dtype, np.integer):
        raise TypeError(f"label mask must hold class indices, got dtype {m.dtype}")
    ignored = (m == ignore_index) if ignore_index is not None else np.zeros(m.shape, dtype=bool)
    bad = ~ignored & ~((m >= 0) & (m < len(pal)))  # NaN is bad too
    if bad.any():
        value = m[bad].flat[0]
        hint = "" if ignore_index is not None else "; pass ignore_index for the ignore label"
        raise ValueError(f"label value {value} is not a class in 0..{len(pal) - 1}{hint}")
    out = pal[np.where(ignored, 0, m).astype(np.intp)]
    out[ignored] = IGNORE_COLOR
    return out


def save_multiclass_samples(
    path: str | os.PathLike,
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray | None],
    preds: Sequence[np.ndarray | None],
    class_names: Sequence[str],
    ignore_index: int | None = None,
    titles: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
) -> Path:
    """One row per sample: image | ground truth | prediction, label maps in :func:`label_palette`
    colours (the data set's ``palette`` if given; ignored pixels black), with a legend of the class
    colours below.

    ``images``: grey or RGB; ``truths``/``preds``: class-index maps (H, W) of the image's size (None
    shows a placeholder); ``titles``: optional row labels, left of each row. Label maps are drawn
    with nearest-neighbour interpolation, so every pixel keeps an exact palette colour.
    """
    images, truths, preds = list(images), list(truths), list(preds)
    if not images:
        raise ValueError("save_multiclass_samples needs at least one image")
    if len(truths) != len(images) or len(preds) != len(images):
        raise ValueError(f"{len(images)} images, {len(truths)} truths and {len(preds)} predictions: need one each")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    names = [str(n) for n in class_names]
    if not names:
        raise ValueError("class_names: need at least one class")
    palette = label_palette(len(names), palette)

    from matplotlib.patches import Patch

    cell_w = 2.0
    cell_h = _cell_height(_as_image(images[0]), cell_w)
    entries = [(name, palette[k]) for k, name in enumerate(names)]
    if ignore_index is not None:
        entries.append((f"ignored ({ignore_index})", np.asarray(IGNORE_COLOR)))
    legend_cols = min(len(entries), 4)
    legend_rows = math.ceil(len(entries) / legend_cols)
    labels = [_wrap_label(t) for t in titles] if titles is not None else None
    left = _label_margin(labels or [], 2.0, 0.0)
    fig = Figure(
        figsize=(left + 3 * cell_w + 0.2, len(images) * (cell_h + 0.08) + 0.45 + 0.22 * legend_rows + 0.1),
        layout="constrained",
    )
    axes = fig.subplots(len(images), 3, squeeze=False)
    for i, (image, truth, pred) in enumerate(zip(images, truths, preds)):
        img = _as_image(image)
        for j, (col, labels_map) in enumerate((("image", None), ("ground truth", truth), ("prediction", pred))):
            ax = axes[i, j]
            _plain(ax)
            if j == 0:
                _show_image(ax, img, cell_w * DPI)
            elif labels_map is None:
                ax.imshow(np.full(img.shape[:2] + (3,), 245, dtype=np.uint8))  # same box as the maps
                _blank(ax, f"no {col}")
            else:
                rgb = colorize_labels(labels_map, palette, ignore_index)
                if rgb.shape[:2] != img.shape[:2]:
                    raise ValueError(f"row {i}: {col} shape {rgb.shape[:2]} does not match image shape {img.shape[:2]}")
                ax.imshow(rgb, interpolation="nearest")  # never blend two classes into a third colour
            if i == 0:
                ax.set_title(col, fontsize=9)
        if labels is not None and labels[i]:
            axes[i, 0].set_ylabel(labels[i], fontsize=8, rotation=0, ha="right", va="center")
    handles = [Patch(facecolor=np.asarray(c, dtype=np.float64) / 255.0, edgecolor="0.6", label=name)
               for name, c in entries]
    fig.legend(handles=handles, loc="outside lower center", ncols=legend_cols, fontsize=8, frameon=False,
               handlelength=1.2, columnspacing=1.0)
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- studies (several variants)


def save_band_curves(
    path: str | os.PathLike,
    panels: Mapping[str, Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[float] | None]]],
    xlabel: str = "epoch",
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One panel per key of `panels`, each a list of ``(label, x, mean, sd)`` lines: the mean as a line
    and, when `sd` is given, a band of mean ± sd (e.g. the spread over seeds). Non-finite points are
    skipped (a band only where both mean and sd are finite). Colours follow the order of the labels,
    so a variant keeps its colour in every panel. `ylim`: fixed y range of every panel (scores in 0..1)."""
    names = list(panels)
    if not names:
        raise ValueError("save_band_curves needs at least one panel")
    labels = list(dict.fromkeys(label for lines in panels.values() for label, *_ in lines))
    fig, axes = _panel_axes(len(names), 4.4, 3.2)
    for ax, name in zip(axes, names):
        all_x = []
        for label, x, mean, sd in panels[name]:
            xs, ys = np.asarray(x, dtype=np.float64), np.asarray(mean, dtype=np.float64)
            if xs.shape != ys.shape:
                raise ValueError(f"{name}/{label}: {xs.size} x values but {ys.size} means")
            color = f"C{labels.index(label) % 10}"
            ok = np.isfinite(xs) & np.isfinite(ys)
            if not ok.any():
                continue
            ax.plot(xs[ok], ys[ok], "-", color=color, marker="o" if ok.sum() <= 30 else None, markersize=3,
                    linewidth=1.4, label=label)
            if sd is not None:
                s = np.asarray(sd, dtype=np.float64)
                band = ok & np.isfinite(s)
                ax.fill_between(xs[band], (ys - s)[band], (ys + s)[band], color=color, alpha=0.18, linewidth=0)
            all_x.append(xs[ok])
        _finish_curve_panel(ax, name, np.concatenate(all_x) if all_x else np.empty(0))
        ax.set_xlabel(xlabel, fontsize=9)
        if xlabel != "epoch":
            ax.xaxis.set_major_locator(AutoLocator())
        if ylim is not None:
            ax.set_ylim(*ylim)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save_figure(fig, path)


def save_pr_curves(
    path: str | os.PathLike,
    curves: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    points: Sequence[tuple[str, float, float]] = (),
    title: str = "precision-recall (salt pixels)",
) -> Path:
    """Precision against recall: ``(label, recall, precision)`` per curve (points in threshold order),
    and ``(label, recall, precision)`` markers for chosen operating points. NaN points are skipped."""
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.subplots()
    for n, (label, recall, precision) in enumerate(curves):
        r, p = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
        if r.shape != p.shape:
            raise ValueError(f"{label}: {r.size} recalls but {p.size} precisions")
        ok = np.isfinite(r) & np.isfinite(p)
        ax.plot(r[ok], p[ok], "-", color=f"C{n % 10}", marker="o" if ok.sum() <= 30 else None, markersize=2.5,
                linewidth=1.3, label=label)
    for n, (label, recall, precision) in enumerate(points):
        ax.plot([recall], [precision], marker="*", markersize=10, linestyle="none", color=f"C{(n + len(curves)) % 10}",
                markeredgecolor="0.2", label=label)
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save_figure(fig, path)


def _missing_cell(ax, image: np.ndarray, text: str) -> None:
    """A light grey cell of the image's size that says what is missing."""
    ax.imshow(np.full(image.shape[:2] + (3,), 245, dtype=np.uint8))
    _blank(ax, text)


def _variant_cell(ax, image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray | None, cell_px: float,
                  palette: np.ndarray | None, ignore_index: int | None) -> None:
    """One prediction: binary as the image with red prediction and green truth contours, multiclass as colours."""
    if pred is None:
        _missing_cell(ax, image, "no prediction")
    elif palette is not None:
        ax.imshow(colorize_labels(pred, palette, ignore_index), interpolation="nearest")
    else:
        _show_image(ax, image, cell_px)
        mask = _as_mask(pred, image.shape, "prediction")
        _tint(ax, mask, PRED_COLOR, 0.22)
        _contour(ax, mask, PRED_COLOR)
        if truth is not None:
            _contour(ax, _as_mask(truth, image.shape, "truth"), TRUTH_COLOR)


def save_variant_predictions(
    path: str | os.PathLike,
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray | None],
    predictions: Mapping[str, Sequence[np.ndarray | None]],
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
    ignore_index: int | None = None,
) -> Path:
    """The same images predicted by several models side by side: one row per image, columns image |
    ground truth | one per key of `predictions` (its label as the column title).

    Binary (no `class_names`): masks; the truth column shows the mask, each prediction the image with
    the predicted area tinted and outlined red and the truth outlined green. Multiclass (`class_names`
    given): class-index maps in :func:`label_palette` colours, ignored pixels black."""
    images, truths = list(images), list(truths)
    if not images:
        raise ValueError("save_variant_predictions needs at least one image")
    for label, preds in [("truths", truths), *predictions.items()]:
        if len(preds) != len(images):
            raise ValueError(f"{len(images)} images but {len(preds)} {label}")
    pal = None if class_names is None else label_palette(len(class_names), palette)
    cols = ["image", "ground truth", *predictions]
    cell_w = 1.7
    cell_h = _cell_height(_as_image(images[0]), cell_w)
    labels = [_wrap_label(t) for t in row_labels] if row_labels is not None else []
    left = _label_margin(labels, 2.0, 0.1)
    fig = Figure(figsize=(left + len(cols) * cell_w + 0.2, len(images) * (cell_h + 0.08) + 0.6 + (0.3 if title else 0)),
                 layout="constrained")
    axes = fig.subplots(len(images), len(cols), squeeze=False)
    for i, (image, truth) in enumerate(zip(images, truths)):
        img = _as_image(image)
        for j, col in enumerate(cols):
            ax = axes[i, j]
            _plain(ax)
            if j == 0:
                _show_image(ax, img, cell_w * DPI)
            elif j == 1:
                _variant_truth(ax, img, truth, pal, ignore_index)
            else:
                _variant_cell(ax, img, truth, predictions[col][i], cell_w * DPI, pal, ignore_index)
            if i == 0:
                ax.set_title(textwrap.shorten(str(col), 24, placeholder="…"), fontsize=9)
        if labels and labels[i]:
            axes[i, 0].set_ylabel(labels[i], fontsize=8, rotation=0, ha="right", va="center")
    if pal is not None:
        _class_legend(fig, [str(n) for n in class_names], pal, ignore_index)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_figure(fig, path)


def _class_legend(fig: Figure, names: Sequence[str], palette: np.ndarray, ignore_index: int | None) -> None:
    """The class colours below a figure of label maps (ignored pixels black)."""
    from matplotlib.patches import Patch

    entries = [(name, palette[k]) for k, name in enumerate(names)]
    if ignore_index is not None:
        entries.append((f"ignored ({ignore_index})", np.asarray(IGNORE_COLOR)))
    handles = [Patch(facecolor=np.asarray(c, dtype=np.float64) / 255.0, edgecolor="0.6", label=name)
               for name, c in entries]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(entries), 4), fontsize=8, frameon=False,
               handlelength=1.2, columnspacing=1.0)


def _variant_truth(ax, image: np.ndarray, truth: np.ndarray | None, palette: np.ndarray | None,
                   ignore_index: int | None) -> None:
    if truth is None:
        _missing_cell(ax, image, "no ground truth")
    elif palette is not None:
        ax.imshow(colorize_labels(truth, palette, ignore_index), interpolation="nearest")
    else:
        ax.imshow(_as_mask(truth, image.shape, "truth"), cmap="gray", vmin=0, vmax=1, interpolation="nearest")


# --------------------------------------------------------------------------- evaluation diagnostics

# Error maps: correct pixels black and white as in a binary truth column, the two kinds of error in a
# colour-blind-safe pair (orange / blue), ignored pixels mid grey; label maps: correct white, wrong red.
ERROR_COLORS = {"true negative": (0, 0, 0), "true positive": (255, 255, 255), "false positive": (255, 140, 0),
                "false negative": (30, 144, 255), "ignored": IGNORED_GREY}
LABEL_ERROR_COLORS = {"correct": (255, 255, 255), "wrong": (214, 39, 40), "ignored": IGNORED_GREY}
_GALLERY_TITLES = ("image", "ground truth", "prediction", "errors")


def error_map(truth: np.ndarray, prediction: np.ndarray, valid: np.ndarray | None = None,
              labels: bool = False) -> np.ndarray:
    """RGB uint8 (H, W, 3) of where a prediction is right and wrong.

    Binary masks (``labels`` False; bool, 0/1 or 0/255): :data:`ERROR_COLORS`, false positives orange and
    false negatives blue on black (true negative) and white (true positive). Class-index maps (``labels``
    True): :data:`LABEL_ERROR_COLORS`, wrong pixels red on white. Pixels outside ``valid`` are grey in both.
    """
    if labels:
        t, p = np.asarray(truth), np.asarray(prediction)
        if t.ndim != 2 or p.shape != t.shape:
            raise ValueError(f"truth {t.shape} and prediction {p.shape} must be label maps (H, W) of one size")
        kinds, colours = {"correct": t == p, "wrong": t != p}, LABEL_ERROR_COLORS
    else:
        t = _as_mask(truth, what="truth")
        p = _as_mask(prediction, t.shape, "prediction")
        kinds = {"true negative": ~t & ~p, "true positive": t & p, "false positive": ~t & p, "false negative": t & ~p}
        colours = ERROR_COLORS
    kinds["ignored"] = np.zeros(t.shape, bool) if valid is None else ~_as_mask(valid, t.shape, "valid")
    out = np.zeros(t.shape + (3,), dtype=np.uint8)
    for kind, where in kinds.items():  # ignored last, so it wins
        out[where] = colours[kind]
    return out


def _gallery_truth(ax, image: np.ndarray, truth: np.ndarray, valid: np.ndarray | None,
                   palette: np.ndarray | None) -> None:
    if palette is None:
        rgb = np.where(_as_mask(truth, image.shape, "truth")[..., None], 255, 0).repeat(3, axis=2).astype(np.uint8)
        ignored_colour = ERROR_COLORS["ignored"]
    else:
        rgb, ignored_colour = colorize_labels(truth, palette), IGNORE_COLOR
    if valid is not None:
        rgb[~_as_mask(valid, image.shape, "valid")] = ignored_colour
    ax.imshow(rgb, interpolation="nearest")


def _gallery_legend(fig: Figure, class_names: Sequence[str] | None, palette: np.ndarray | None,
                    ncols: int) -> None:
    from matplotlib.patches import Patch

    if palette is None:
        entries = [(f"{kind} (errors)" if kind == "ignored" else kind, colour) for kind, colour in ERROR_COLORS.items()]
    else:
        entries = [*zip(class_names, palette), ("ignored (truth)", IGNORE_COLOR),
                   *((f"{kind} (errors)", colour) for kind, colour in LABEL_ERROR_COLORS.items())]
    handles = [Patch(facecolor=np.asarray(c, dtype=np.float64) / 255.0, edgecolor="0.6", label=str(name))
               for name, c in entries]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=ncols, fontsize=8,
               frameon=False, handlelength=1.2, columnspacing=1.0)


def save_error_gallery(
    path: str | os.PathLike,
    rows: Sequence[Mapping],
    title: str | None = None,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
) -> Path:
    """The worst images of an evaluation: one row per image, columns image | ground truth | prediction |
    errors (:func:`error_map`), a legend of the colours below.

    Each row: ``{'image': arr, 'truth': mask, 'prediction': mask, 'valid': optional bool (H, W) of the pixels
    that count, 'label': optional str}``. Binary (no ``class_names``): the truth white on black, the
    prediction as in :func:`save_prediction_grid` (red area, green truth contour). Multiclass
    (``class_names`` given): class-index maps in :func:`label_palette` colours, ignored truth pixels black.
    """
    from dataclasses import replace

    rows = list(rows)
    if not rows:
        raise ValueError("save_error_gallery needs at least one row")
    pal = None if class_names is None else label_palette(len(class_names), palette)
    labels = [_wrap_label(r["label"]) if r.get("label") else "" for r in rows]
    layout = _grid_layout(rows, _GALLERY_TITLES, labels, title)
    entries = len(ERROR_COLORS) if pal is None else len(pal) + 1 + len(LABEL_ERROR_COLORS)
    ncols = min(entries, 5)
    layout = replace(layout, fig_h=layout.fig_h + 0.1 + 0.22 * math.ceil(entries / ncols))  # room for the legend
    fig = Figure(figsize=(layout.fig_w, layout.fig_h))
    for i, row in enumerate(rows):
        img = _as_image(row["image"])
        truth, pred, valid = np.asarray(row["truth"]), np.asarray(row["prediction"]), row.get("valid")
        axes = [fig.add_axes(layout.cell_box(i, j)) for j in range(len(_GALLERY_TITLES))]
        for j, ax in enumerate(axes):
            _plain(ax)
            if i == 0:
                ax.set_title(_GALLERY_TITLES[j], fontsize=9)
        _show_image(axes[0], img, layout.cell_px)
        _gallery_truth(axes[1], img, truth, valid, pal)
        if pal is None:
            _grid_prediction(axes[2], _GridRow.of({"image": img, "truth": truth, "prediction": pred}), layout.cell_px)
        else:
            axes[2].imshow(colorize_labels(pred, pal), interpolation="nearest")
        axes[3].imshow(error_map(truth, pred, valid, labels=pal is not None), interpolation="nearest")
        if labels[i]:
            axes[0].text(-0.08 / layout.cell_w, 0.5, labels[i], ha="right", va="center", fontsize=8,
                         transform=axes[0].transAxes)
    _gallery_legend(fig, class_names, pal, ncols)
    if title:
        fig.suptitle(title, fontsize=11, y=1.0 - 0.08 / layout.fig_h, va="top")
    return _save_figure(fig, path)


def save_confusion_matrix(
    path: str | os.PathLike,
    confusion: np.ndarray,
    class_names: Sequence[str],
    title: str | None = None,
    annotate_up_to: int = 15,
) -> Path:
    """A (C, C) confusion matrix of pixel counts (rows = true class, columns = predicted), each row divided by
    its total: cell (i, j) is the share of class i's pixels predicted as j, the diagonal is each class's
    recall. A class absent from the truth is a grey row. With at most ``annotate_up_to`` classes every cell
    shows its share in percent."""
    from matplotlib import colormaps

    cm = np.asarray(confusion, dtype=np.float64)
    names = [str(n) for n in class_names]
    if cm.ndim != 2 or cm.shape != (len(names), len(names)):
        raise ValueError(f"confusion must be ({len(names)}, {len(names)}) for {len(names)} class names, got {cm.shape}")
    if not np.all(np.isfinite(cm)) or np.any(cm < 0):
        raise ValueError("confusion must hold non-negative pixel counts")
    totals = cm.sum(axis=1, keepdims=True)
    shares = np.divide(cm, totals, out=np.full_like(cm, np.nan), where=totals > 0)
    c = len(names)
    side = float(np.clip(0.45 * c + 2.5, 4.0, 14.0))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow(np.ma.masked_invalid(shares), cmap=colormaps["Blues"].with_extremes(bad="0.85"), vmin=0.0,
                      vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(c), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(c), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if c <= annotate_up_to:
        for (i, j), share in np.ndenumerate(shares):
            text = "-" if np.isnan(share) else "<1%" if 0 < share < 0.005 else f"{share:.0%}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7 if c > 8 else 9,
                    color="white" if share > 0.5 else "0.15")
    cb = fig.colorbar(shown, ax=ax, shrink=0.8)
    cb.set_label("share of the true class's pixels", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    ax.set_title(title or "confusion matrix (rows normalised)", fontsize=10)
    return _save_figure(fig, path)


def save_metrics_against_threshold(
    path: str | os.PathLike,
    thresholds: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    marks: Sequence[tuple[str, float]] = (),
    title: str = "salt pixels and TGS metric against the threshold",
) -> Path:
    """Each of `curves` (name -> one value per threshold, e.g. precision, recall, F1, IoU, TGS metric) against
    the probability threshold, and a dashed vertical line at each chosen threshold of ``(label, threshold)``
    `marks`, labelled (labels of one threshold joined). NaN points are skipped."""
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.subplots()
    for n, (name, values) in enumerate(curves.items()):
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.shape != t.shape:
            raise ValueError(f"{name} has {v.size} values but there are {t.size} thresholds")
        ok = np.isfinite(v) & np.isfinite(t)
        ax.plot(t[ok], v[ok], color=f"C{n % 10}", linewidth=1.5, label=name)
    by_threshold: dict[float, list[str]] = {}
    for label, threshold in marks:
        by_threshold.setdefault(float(threshold), []).append(label)
    for threshold, labels in sorted(by_threshold.items()):
        ax.axvline(threshold, color="0.25", linestyle="--", linewidth=1.0)
        ax.text(threshold, 0.02, f" {', '.join(labels)} ({threshold:g})", rotation=90, fontsize=7,
                va="bottom", ha="right", color="0.15")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("probability threshold")
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _save_figure(fig, path)
