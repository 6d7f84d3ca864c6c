"""The task objects carry the data's classes: names and, where the format has its own, colours."""

from __future__ import annotations

import pytest

from unetlab.data.formats.camvid import CAMVID_CLASSES, CAMVID_COLOURS
from unetlab.tasks import build_task
from unetlab.viz import label_palette


def test_task_carries_the_datas_palette():
    task = build_task("multiclass", CAMVID_CLASSES, palette=CAMVID_COLOURS)
    assert task.palette == CAMVID_COLOURS
    assert label_palette(len(task.class_names), task.palette).tolist() == [list(c) for c in CAMVID_COLOURS]
    binary = build_task("binary", None)
    assert binary.palette is None and label_palette(2, binary.palette).shape == (2, 3)  # generic colours
    with pytest.raises(ValueError, match="11 palette colours for 3 classes"):
        build_task("multiclass", ["a", "b", "c"], palette=CAMVID_COLOURS)
