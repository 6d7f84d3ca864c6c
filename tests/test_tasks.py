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


def test_binary_decode_removes_small_components_before_min_area_as_its_metrics_do():
    import torch

    from unetlab.metrics import binary_counts

    probs = torch.zeros(1, 1, 8, 8)
    probs[0, 0, 0, :3] = 0.9  # a component of 3 pixels
    probs[0, 0, 4:6, 4:7] = 0.9  # a component of 6 pixels
    probs[0, 0, 6, 7] = 0.9  # touches the 6 only diagonally: 8-connected, so that component has 7 pixels
    truth = torch.zeros(1, 8, 8, dtype=torch.bool)
    truth[0, 4:6, 4:7] = True
    task = build_task("binary", None, threshold=0.5, min_component=4)
    kept = task.decode(probs)[0]
    assert int(kept.sum()) == 7 and int(kept[0, :].sum()) == 0
    # min_area counts what the component rule left (7 pixels), not the 10 above the threshold
    assert int(build_task("binary", None, 0.5, min_area=8, min_component=4).decode(probs).sum()) == 0
    assert int(build_task("binary", None, 0.5, min_area=7, min_component=4).decode(probs).sum()) == 7
    assert int(task.decode(probs, min_component=0).sum()) == 10  # an explicit value overrides the task's
    for area in (7, 8):
        ruled = build_task("binary", None, 0.5, min_area=area, min_component=4)
        metrics = ruled.new_metrics()
        ruled.update_metrics(metrics, probs, truth)
        assert torch.equal(metrics.state(), binary_counts(ruled.decode(probs).bool(), truth))
