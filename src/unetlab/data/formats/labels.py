"""How stored mask values become labels, and which mask files are refused: one owner for the readers
(`tgs`, `folders`) and for `unetlab inspect`, so that training refuses what inspect reports.

Binary masks are mapped by the reader option `binary_rule`:

* `strict` (the default of `tgs`): a mask holds 0 and at most one foreground value, {0, 1},
  {0, 255} or {0, 65535} (1-, 8- and 16-bit conventions); anything else ({0, 1, 2, 7}, anti-aliased
  edges, resampling) is refused naming the file and its values;
* `nonzero`: every value > 0 is foreground (the mask is taken as it is, noise included);
* `threshold:T`: values > T are foreground (e.g. `threshold:127` for 0/255 masks with soft edges).

Lossy mask files (JPEG, lossy WebP; found by content, not by name) are refused unless the reader
option `allow_lossy_masks` is true: compression noise around every edge would become labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetlab.errors import DataError

BINARY_RULES = ("strict", "nonzero", "threshold:T")
BINARY_VALUE_SETS = ({0, 1}, {0, 255}, {0, 65535})
_SHOWN_VALUES = 8


def option_hint(name: str, value: str) -> str:
    """How a user sets a reader option, for train and for inspect."""
    return f"--set data.options.{name}={value} (inspect: --set-option {name}={value})"


@dataclass(frozen=True)
class BinaryRule:
    name: str  # "strict" | "nonzero" | "threshold:T"
    threshold: int  # a value > threshold is foreground (0 for strict and nonzero)

    @property
    def strict(self) -> bool:
        return self.name == "strict"


def parse_binary_rule(rule: Any, name: str = "binary_rule") -> BinaryRule:
    """The rule a `binary_rule` option value names; anything else is a DataError naming the option."""
    text = rule.strip().lower() if isinstance(rule, str) else None
    if text in ("strict", "nonzero"):
        return BinaryRule(text, 0)
    if text is not None and text.startswith("threshold:"):
        number = text.partition(":")[2].strip()
        if number.isdigit():
            return BinaryRule(f"threshold:{int(number)}", int(number))
    raise DataError(f"{name}={rule!r}: unknown rule; choose strict (only 0/1, 0/255 or 0/65535 masks), nonzero "
                    "(every value > 0 is foreground) or threshold:T (values > T are foreground, e.g. threshold:127)")


def check_allow_lossy(value: Any, name: str = "allow_lossy_masks") -> bool:
    if not isinstance(value, bool):
        raise DataError(f"{name}={value!r}: expected true or false")
    return value


def distinct_values(values: np.ndarray) -> list[int]:
    """Sorted distinct values of a mask (a histogram for 8-bit masks: no sort of every pixel)."""
    values = np.asarray(values)
    if values.dtype == bool:
        values = values.astype(np.uint8)
    if values.dtype == np.uint8:
        return np.flatnonzero(np.bincount(values.ravel(), minlength=256)).tolist()
    return [int(v) for v in np.unique(values)]


def binary_values_problem(values: np.ndarray, rule: BinaryRule, ignore_index: int | None = None) -> str | None:
    """What `rule` refuses in a mask's stored values (without the file name), None when they are fine."""
    if not rule.strict:
        return None
    found = [v for v in distinct_values(values) if v != ignore_index]
    if any(set(found) <= allowed for allowed in BINARY_VALUE_SETS):
        return None
    shown = ", ".join(map(str, found[:_SHOWN_VALUES])) + (", ..." if len(found) > _SHOWN_VALUES else "")
    return (f"mask values {{{shown}}} are not binary (binary_rule=strict takes 0/1, 0/255 or 0/65535 masks); "
            f"map them with {option_hint('binary_rule', 'nonzero')} (every value > 0 is foreground) or "
            "binary_rule=threshold:T (values > T), or fix the mask")


def binarize(values: np.ndarray, rule: BinaryRule, ignore_index: int | None = None) -> np.ndarray:
    """Class indices {0, 1} (uint8) of stored values under `rule`; `ignore_index` pixels keep that value."""
    mask = (np.asarray(values) > rule.threshold).astype(np.uint8)
    if ignore_index is not None:
        ignored = np.asarray(values) == ignore_index
        if ignored.any():
            mask[ignored] = ignore_index
    return mask


def lossy_kind(path: Path) -> str | None:
    """"JPEG" or "lossy WebP" when the file's content is one (by its header), else None."""
    try:
        with Path(path).open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return None  # the reader reports the file itself
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8 ":  # VP8L is lossless, VP8X rare: not refused
        return "lossy WebP"
    return None


def lossy_problem(path: Path, allow_lossy: bool) -> str | None:
    """The refusal of a lossy mask file (naming it and the option), None when it is not lossy or allowed."""
    kind = None if allow_lossy else lossy_kind(path)
    if kind is None:
        return None
    return (f"{path}: mask stored as {kind}, a lossy format: its compression noise would become labels; save "
            f"the masks as PNG, or accept them with {option_hint('allow_lossy_masks', 'true')} and a binary_rule "
            "for the noise (e.g. threshold:127)")


@dataclass(frozen=True)
class MaskRules:
    """The label rules of one read: the binary mapping (None: values are class indices) and lossy files."""

    binary_rule: BinaryRule | None = None
    allow_lossy: bool = False
    ignore_index: int | None = None

    def problem(self, path: Path | str, values: np.ndarray) -> tuple[str, str] | None:
        """(kind, one-line message naming the file) of what the reader refuses in this mask, or None.
        kind is "lossy" or "values"."""
        lossy = lossy_problem(Path(path), self.allow_lossy)
        if lossy:
            return "lossy", lossy
        if self.binary_rule is not None:
            values_problem = binary_values_problem(values, self.binary_rule, self.ignore_index)
            if values_problem:
                return "values", f"{path}: {values_problem}"
        return None

    def labels(self, values: np.ndarray) -> np.ndarray:
        """The class indices of stored values: binarized under the rule, else the values themselves."""
        if self.binary_rule is None:
            return values
        return binarize(values, self.binary_rule, self.ignore_index)

    def check(self, path: Path | str, values: np.ndarray) -> np.ndarray:
        """`labels(values)`, or the DataError of `problem` (what training refuses)."""
        found = self.problem(path, values)
        if found:
            raise DataError(found[1])
        return self.labels(values)
