"""Data statistics that stream: per-channel image moments, class pixel counts, class weights.

Everything here works one image (or one batch) at a time, so a data set that does not fit in memory,
or whose images differ in size, can be summarised in one pass, and shards summarised apart can be
merged exactly.

- `RunningMoments`: per-channel mean and (population) standard deviation, in [0, 1] units for uint8
  input, float64 accumulation with the parallel update of Chan, Golub & LeVeque (Welford's update
  applied to whole batches), so the result does not depend on how the data was cut into batches.
- `class_pixel_counts` / `class_pixel_counts_per_image`: how many pixels of each class the masks hold.
- `class_weights`: inverse-frequency or median-frequency-balancing weights for a weighted loss.
- `coverage` / `class_coverage`: the share of an image's labelled pixels taken by the foreground or
  by each class.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Iterable, Literal

import numpy as np

#: std below this is treated as zero by `RunningMoments.safe_std` (the same guard as
#: `unetlab.data.tensors.channel_stats`).
STD_EPSILON = 1e-6


# ----------------------------------------------------------------------------- image moments


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to ask
    return torch is not None and isinstance(value, torch.Tensor)


def _scaled_pixels(array: np.ndarray) -> np.ndarray:
    """float64 copy of `array` in model units: uint8 / 255, bool as 0/1, floats unchanged."""
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype == bool or array.dtype.kind == "f":
        return array.astype(np.float64)
    raise ValueError(f"images must be uint8 (scaled to [0, 1]) or floating point, got dtype {array.dtype}; "
                     "convert other integer types to float in the units you want first")


def _moments(flat: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, M2) of the rows of a (P, C) float64 array, by a shifted two-pass sum.

    Shifting by the first pixel makes a constant image come out with mean exactly that value and
    M2 exactly 0.
    """
    count = flat.shape[0]
    shift = flat[0]
    deviation = flat - shift
    offset = deviation.mean(axis=0)
    m2 = np.square(deviation - offset).sum(axis=0)
    return count, shift + offset, m2


class RunningMoments:
    """Streaming per-channel mean and population std of images of any sizes.

    `update(batch)` accepts:

    - a single numpy image, (H, W) (one channel) or (H, W, C);
    - a stack of numpy images (N, H, W, C) (a 4-d array), or (N, H, W) with ``stacked=True``
      (a 3-d array is otherwise read as one (H, W, C) image: pass ``stacked=True`` for the
      (N, H, W) grey stacks of `unetlab.data.formats`);
    - a torch tensor (N, C, H, W), on any device;
    - a list or other iterable of any of these, e.g. images of different sizes.

    uint8 input is divided by 255, so results are in the [0, 1] units that
    `unetlab.data.tensors.images_to_tensor` produces; bool counts as 0/1 and floating-point input is
    taken as it is. Every pixel weighs the same, whatever the size of its image. The number of
    channels is fixed by the first data (or by ``channels``); data with another count is refused.

    `merge(other)` folds in the moments of another accumulator (another shard of the data); the
    result equals, up to rounding, a single pass over all the data in any order.
    """

    def __init__(self, channels: int | None = None) -> None:
        if channels is not None and channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        self.channels = channels
        self._count = 0
        self._mean = np.zeros(channels or 0, dtype=np.float64)
        self._m2 = np.zeros(channels or 0, dtype=np.float64)

    # --- accumulation ---------------------------------------------------------------------------

    def update(self, batch: Any, *, stacked: bool = False) -> "RunningMoments":
        """Add a batch of images (see the class docstring for the accepted forms); returns self."""
        if _is_tensor(batch):
            self._add_tensor(batch)
        elif isinstance(batch, np.ndarray):
            if batch.ndim == 4 or (stacked and batch.ndim == 3):
                for image in batch:
                    self._add_image(image)
            else:
                self._add_image(batch)
        elif isinstance(batch, (str, bytes)) or not hasattr(batch, "__iter__"):
            raise TypeError(f"cannot read images from a {type(batch).__name__}")
        else:
            for item in batch:
                if _is_tensor(item):
                    self._add_tensor(item)
                else:
                    self._add_image(np.asarray(item))
        return self

    def _add_tensor(self, tensor: Any) -> None:
        if tensor.ndim != 4:
            raise ValueError(f"a tensor batch must be (N, C, H, W), got shape {tuple(tensor.shape)}")
        tensor = tensor.detach().cpu()
        if not tensor.dtype.is_floating_point and str(tensor.dtype) not in ("torch.uint8", "torch.bool"):
            raise ValueError(f"images must be uint8 or floating point, got {tensor.dtype}")
        if tensor.dtype.is_floating_point:
            import torch

            tensor = tensor.to(torch.float64)  # bf16/fp16 have no numpy dtype
        array = tensor.numpy()
        channels = array.shape[1]
        self._add_flat(_scaled_pixels(np.moveaxis(array, 1, -1).reshape(-1, channels)))

    def _add_image(self, image: np.ndarray) -> None:
        if image.ndim == 2:
            image = image[..., None]
        elif image.ndim != 3:
            raise ValueError(f"an image must be (H, W) or (H, W, C), got shape {image.shape}")
        self._add_flat(_scaled_pixels(image.reshape(-1, image.shape[-1])))

    def _add_flat(self, flat: np.ndarray) -> None:
        self._check_channels(flat.shape[1])
        if flat.shape[0] == 0:
            return
        self._combine(*_moments(flat))

    def _check_channels(self, channels: int) -> None:
        if self.channels is None:
            self.channels = channels
            self._mean = np.zeros(channels, dtype=np.float64)
            self._m2 = np.zeros(channels, dtype=np.float64)
        elif channels != self.channels:
            raise ValueError(f"got images with {channels} channel(s) after images with {self.channels}")

    def _combine(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Chan et al.: merge (count, mean, M2) into the running state."""
        if count == 0:
            return
        if self._count == 0:
            self._count, self._mean, self._m2 = count, mean.copy(), m2.copy()
            return
        total = self._count + count
        delta = mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._m2 = self._m2 + m2 + np.square(delta) * (self._count * count / total)
        self._count = total

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        """Fold in another accumulator's data (in place); returns self."""
        if not isinstance(other, RunningMoments):
            raise TypeError(f"can only merge a RunningMoments, got {type(other).__name__}")
        if other._count == 0:
            return self
        self._check_channels(int(other.channels))
        self._combine(other._count, other._mean, other._m2)
        return self

    # --- results ----------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Pixels seen per channel."""
        return self._count

    def _require_data(self) -> None:
        if self._count == 0:
            raise ValueError("no pixels seen yet: call update() with some images first")

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean, float64 (C,)."""
        self._require_data()
        return self._mean.copy()

    @property
    def var(self) -> np.ndarray:
        """Per-channel population variance (divided by the pixel count), float64 (C,)."""
        self._require_data()
        return np.maximum(self._m2 / self._count, 0.0)

    @property
    def std(self) -> np.ndarray:
        """Per-channel population std, float64 (C,); exactly 0 for a constant channel."""
        return np.sqrt(self.var)

    def safe_std(self) -> np.ndarray:
        """`std` with values below 1e-6 replaced by 1, safe to divide by (as `channel_stats` does)."""
        std = self.std
        return np.where(std > STD_EPSILON, std, 1.0)

    def normalization(self) -> tuple[list[float], list[float]]:
        """(mean, safe std) as lists: the same form and values as `tensors.channel_stats`."""
        return self.mean.tolist(), self.safe_std().tolist()

    def __repr__(self) -> str:
        if self._count == 0:
            return f"RunningMoments(channels={self.channels}, count=0)"
        return f"RunningMoments(count={self._count}, mean={self.mean.round(6).tolist()}, std={self.std.round(6).tolist()})"


# ----------------------------------------------------------------------------- class pixel counts


def _check_mask_values(mask: np.ndarray, num_classes: int, ignore_index: int | None, where: str) -> np.ndarray:
    """The mask's labelled values as int64 (ignored pixels dropped); ValueError names a bad value."""
    if mask.dtype == bool:
        values = mask.astype(np.int64).ravel()
    elif mask.dtype.kind in "ui":
        values = mask.astype(np.int64).ravel()
    else:
        raise ValueError(f"{where}: masks must hold integer class indices, got dtype {mask.dtype}")
    if ignore_index is not None:
        values = values[values != ignore_index]
    bad = (values < 0) | (values >= num_classes)
    if bad.any():
        found = np.unique(values[bad])
        shown = ", ".join(str(v) for v in found[:5]) + (", ..." if len(found) > 5 else "")
        hint = "" if ignore_index is not None else "; pass ignore_index for a 'void' label"
        raise ValueError(f"{where}: class value {found[0]} is outside [0, {num_classes}) "
                         f"(values found: {shown}){hint}")
    return values


def _check_num_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    return int(num_classes)


def class_pixel_counts_per_image(masks: Iterable[np.ndarray], num_classes: int,
                                 ignore_index: int | None = None) -> np.ndarray:
    """int64 (N, K): pixels of class c in mask i; pixels equal to `ignore_index` are not counted.

    Masks may differ in size; bool masks count as classes 0/1. A value outside [0, num_classes)
    other than `ignore_index` raises ValueError naming the value and the mask.
    """
    num_classes = _check_num_classes(num_classes)
    rows = [np.bincount(_check_mask_values(np.asarray(mask), num_classes, ignore_index, f"mask {i}"),
                        minlength=num_classes)
            for i, mask in enumerate(masks)]
    if not rows:
        return np.zeros((0, num_classes), dtype=np.int64)
    return np.stack(rows).astype(np.int64)


def class_pixel_counts(masks: Iterable[np.ndarray], num_classes: int,
                       ignore_index: int | None = None) -> np.ndarray:
    """int64 (K,): pixels of each class over all masks (streams: one mask in memory at a time).

    Same rules as `class_pixel_counts_per_image`.
    """
    num_classes = _check_num_classes(num_classes)
    total = np.zeros(num_classes, dtype=np.int64)
    for i, mask in enumerate(masks):
        values = _check_mask_values(np.asarray(mask), num_classes, ignore_index, f"mask {i}")
        total += np.bincount(values, minlength=num_classes).astype(np.int64)
    return total


# ----------------------------------------------------------------------------- class weights


def class_weights(counts: np.ndarray, method: Literal["inverse", "median", "none"] = "inverse",
                  normalize: bool = True) -> np.ndarray:
    """Per-class loss weights, float64 (K,).

    `counts` are class pixel counts: totals (K,) from `class_pixel_counts`, or per image (N, K)
    from `class_pixel_counts_per_image` (summed over images where only totals are needed).

    - ``"inverse"``: inverse class frequency, w_c = total / (K * n_c), with n_c the pixels of class
      c, total the labelled pixels of all classes and K the number of classes (K = len(counts)).
      Without normalisation every present class then carries the same total weight
      n_c * w_c = total / K.
    - ``"median"``: median frequency balancing (Eigen & Fergus, 2015): w_c = median(freq) / freq_c
      with freq_c = n_c / (labelled pixels of the images in which class c is present), and the
      median taken over the classes present somewhere. That definition needs to know which images
      hold each class, so this method requires the per-image counts (N, K); a class is present in
      an image when it has at least one pixel there.
    - ``"none"``: every class weighs 1 (absent ones too: with no pixels they do not matter).

    Pixels equal to the masks' ignore index are not in the counts, so they count nowhere (neither in
    n_c nor in the totals).

    A class absent from all the masks (n_c = 0) has no frequency; it gets weight 0 (a UserWarning
    names it) and takes no part in the median or the normalisation. If such a class can occur at
    training time, recompute the weights on data that holds it.

    ``normalize=True`` rescales the weights so that their pixel-weighted mean is 1:
    sum_c n_c w_c / sum_c n_c = 1, i.e. over the counted pixels a weighted per-pixel loss has the
    same scale as the unweighted one, and the learning rate keeps its meaning. For "inverse" this
    gives w_c = total / (P * n_c), with P the number of present classes.
    """
    counts = np.asarray(counts)
    if counts.dtype.kind not in "uif" or counts.ndim not in (1, 2) or counts.shape[-1] == 0:
        raise ValueError(f"counts must be a non-empty (K,) or (N, K) array of pixel counts, got shape {counts.shape}")
    if (counts < 0).any():
        raise ValueError("counts must not be negative")
    counts = counts.astype(np.float64)
    totals = counts.sum(axis=0) if counts.ndim == 2 else counts
    total = totals.sum()
    if total <= 0:
        raise ValueError("counts hold no labelled pixels: cannot weight classes")
    present = totals > 0
    num_classes = len(totals)

    if method == "none":
        return np.ones(num_classes, dtype=np.float64)
    if method == "inverse":
        weights = np.zeros(num_classes, dtype=np.float64)
        weights[present] = total / (num_classes * totals[present])
    elif method == "median":
        if counts.ndim != 2:
            raise ValueError("median frequency balancing needs per-image counts (N, K) "
                             "(class_pixel_counts_per_image): a class's frequency is taken over the "
                             "images in which it is present")
        image_pixels = counts.sum(axis=1)                        # labelled pixels per image
        in_image = counts > 0                                     # (N, K) presence
        pixels_where_present = (in_image * image_pixels[:, None]).sum(axis=0)
        freq = np.zeros(num_classes, dtype=np.float64)
        freq[present] = totals[present] / pixels_where_present[present]
        weights = np.zeros(num_classes, dtype=np.float64)
        weights[present] = np.median(freq[present]) / freq[present]
    else:
        raise ValueError(f"unknown class weighting method {method!r}; use 'inverse', 'median' or 'none'")

    if not present.all():
        absent = np.flatnonzero(~present).tolist()
        warnings.warn(f"class(es) {absent} have no pixels in the counts: weight 0", UserWarning, stacklevel=2)
    if normalize:
        weights *= total / float((totals * weights).sum())
    return weights


# ----------------------------------------------------------------------------- coverage


def class_coverage(mask: np.ndarray, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """float64 (K,): each class's share of the mask's labelled pixels (all zeros if none is labelled)."""
    counts = class_pixel_counts([mask], num_classes, ignore_index).astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def coverage(mask: np.ndarray, ignore_index: int | None = None) -> float:
    """Share of the mask's labelled pixels that are not background (value != 0).

    For a bool mask this is the salt coverage used by `splits.coverage_classes`. Pixels equal to
    `ignore_index` are left out of both numerator and denominator; 0.0 when nothing is labelled.
    """
    mask = np.asarray(mask)
    if ignore_index is not None:
        mask = mask[mask != ignore_index]
    return float(np.count_nonzero(mask)) / mask.size if mask.size else 0.0
