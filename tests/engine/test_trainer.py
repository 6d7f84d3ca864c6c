import csv
import json

import numpy as np
import pytest
import torch
from run_fixtures import TINY, tiny_config

from unetlab.config import load_config

from unetlab.engine.checkpoint import load_checkpoint
from unetlab.engine.trainer import train
from unetlab.errors import ConfigError, UnetlabError


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_run_folder_holds_everything(tiny_run, tgs_dir, tgs_info):
    for name in ("config.yaml", "split.json", "metrics.csv", "checkpoints/best.pt", "checkpoints/last.pt",
                 "figures/learning_curves.png", "report.md", "evaluation/best-val.json",
                 "figures/predictions-best-val.png"):
        assert (tiny_run / name).is_file(), name
    assert list(tiny_run.glob("events.out.tfevents.*")), "TensorBoard events missing"
    assert not list(tiny_run.rglob("*.tmp")), "temporary files left behind"
    rows = _rows(tiny_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("train/loss", "val/loss", "val/tgs_map", "val/iou", "val/dice", "val/precision", "val/recall",
                "val/pixel_accuracy", "lr", "train/images_per_s"):
        assert np.isfinite(float(rows[-1][key])), key
    split = json.loads((tiny_run / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == tgs_info["n"]
    assert not set(split["train"]) & set(split["val"])


def test_checkpoints_load_weights_only_and_carry_what_predict_needs(tiny_run):
    best = torch.load(tiny_run / "checkpoints" / "best.pt", weights_only=True)
    assert best["config"]["model"]["base_width"] == 4
    assert best["threshold"] == 0.5 and len(best["mean"]) == 1 and len(best["std"]) == 1
    last = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    assert "optimizer_state" in last and last["epoch"] == 2


def test_early_stopping_stops_when_monitor_stalls(tgs_dir, tmp_path):
    # lr ~ 0: the model cannot change, so val/tgs_map never strictly improves after epoch 1.
    cfg = tiny_config("train.epochs=6", "train.early_stop_patience=2", "optim.lr=1e-30",
                      "train.monitor=val/tgs_map", "train.monitor_mode=max", "schedule.name=constant")
    result = train(cfg, tgs_dir, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    assert result.epochs_run == 3 and result.best_epoch == 1
    assert "early stop" in result.stop_reason


def test_plateau_schedule_reduces_learning_rate(tgs_dir, tmp_path):
    cfg = tiny_config("train.epochs=3", "optim.lr=1e-30", "schedule.name=plateau", "schedule.patience=0",
                      "schedule.factor=0.5", "schedule.min_lr=0", "train.monitor=val/tgs_map",
                      "train.monitor_mode=max")
    result = train(cfg, tgs_dir, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    lrs = [row["lr"] for row in result.history]
    assert lrs[1] == pytest.approx(lrs[0] * 0.5) and lrs[2] == pytest.approx(lrs[0] * 0.25)


def test_time_budget_ends_run_early(tgs_dir, tmp_path):
    cfg = tiny_config("train.epochs=50", "train.max_minutes=0.0001")
    result = train(cfg, tgs_dir, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    assert result.epochs_run == 1 and "time budget" in result.stop_reason


def test_training_reduces_loss_on_synthetic_salt(tgs_dir, tmp_path):
    cfg = tiny_config("train.epochs=8", "optim.lr=0.01", "schedule.name=constant")
    result = train(cfg, tgs_dir, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    losses = [row["train/loss"] for row in result.history]
    assert min(losses[-3:]) < losses[0] * 0.8


def test_existing_run_folder_is_never_overwritten(tiny_run, tgs_dir):
    with pytest.raises(UnetlabError, match="never overwritten"):
        train(tiny_config(), tgs_dir, run_dir=tiny_run, progress=False, log=lambda _: None)


def test_unknown_monitor_is_refused_before_the_first_step(tgs_dir, tmp_path, capsys):
    from run_fixtures import assert_one_line_error, run_cli

    sets = [arg for item in TINY for arg in ("--set", item)]
    code, _, err = run_cli(["train", "--data", str(tgs_dir), "--out", str(tmp_path / "r"), "--no-progress", *sets,
                            "--set", "train.monitor=val/bogus"], capsys)
    # Every name the binary task logs is offered, and nothing was trained or written.
    assert_one_line_error(code, err, "train.monitor", "'val/bogus'", "train/loss, val/loss, val/pixel_accuracy, "
                          "val/iou, val/dice, val/precision, val/recall, val/tgs_map, val/mean_image_iou")
    assert not (tmp_path / "r").exists()


def test_monitor_names_are_the_metrics_the_task_logs():
    from unetlab.engine.trainer import monitor_names
    from unetlab.tasks import build_task

    assert monitor_names(build_task("multiclass", ["sky", "road"])) == [
        "train/loss", "val/loss", "val/pixel_accuracy", "val/mean_accuracy", "val/miou", "val/mean_dice",
        "val/fw_iou", "val/iou/sky", "val/iou/road"]


class _PoisonWeights:
    """At the first step of epoch 2, make every weight NaN: the next step's loss is NaN."""

    def on_step_end(self, trainer, step, loss):
        if trainer.state.epoch == 1 and step == 0:
            with torch.no_grad():
                for parameter in trainer.model.parameters():
                    parameter.fill_(float("nan"))


def test_a_nan_loss_stops_the_run_at_once_and_keeps_the_last_good_checkpoints(tgs_dir, tmp_path):
    run = tmp_path / "run"
    # 12 training images in batches of 4: 3 steps an epoch; poisoned after step 4, so step 5 is NaN.
    with pytest.raises(UnetlabError, match=r"training diverged: the training loss reached nan at step 5 \(epoch 2\)"
                                           r".*optim.lr.*epoch 1 and before are kept"):
        train(tiny_config("train.batch_size=4", "train.epochs=3"), tgs_dir, run_dir=run, progress=False,
              log=lambda _: None, callbacks=[_PoisonWeights()])
    for which in ("last", "best"):
        payload = load_checkpoint(run / "checkpoints" / f"{which}.pt")
        assert payload["epoch"] == 1, which
        assert all(torch.isfinite(value).all() for value in payload["model_state"].values()), which
    assert [int(row["epoch"]) for row in _rows(run)] == [1]
    assert not list(run.rglob("*.tmp"))


def test_cli_train_with_a_huge_learning_rate_fails_with_one_line_naming_the_causes(tgs_dir, tmp_path, capsys):
    from run_fixtures import assert_one_line_error, run_cli

    sets = [arg for item in TINY for arg in ("--set", item)]
    code, _, err = run_cli(["train", "--data", str(tgs_dir), "--out", str(tmp_path / "r"), "--no-progress", *sets,
                            "--set", "optim.lr=1e6", "--set", "optim.name=sgd", "--set", "train.precision=bf16"],
                           capsys)
    assert_one_line_error(code, err, "training diverged", "optim.lr=1e+06 is likely too high for sgd",
                          "--set optim.lr=0.001", "--set train.precision=fp32", "optim.grad_clip_norm")
    assert not (tmp_path / "r" / "checkpoints" / "best.pt").exists()


def test_split_file_is_reused(tiny_run, tgs_dir, tmp_path):
    cfg = tiny_config("train.epochs=1", f"data.split_file={tiny_run / 'split.json'}", "data.val_fraction=0.5")
    result = train(cfg, tgs_dir, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    old = json.loads((tiny_run / "split.json").read_text())
    new = json.loads((result.run_dir / "split.json").read_text())
    assert (old["train"], old["val"]) == (new["train"], new["val"])


def test_pretrained_encoder_statistics_and_freezing(tgs_dir, tmp_path):
    """A ResNet-34 encoder from a local weights file: ImageNet statistics are used and stored, and
    the encoder does not move while frozen."""
    from unetlab.models.resnet import ResNetEncoder

    torch.manual_seed(0)
    weights = {**ResNetEncoder(in_channels=3).state_dict(), "fc.weight": torch.zeros(1000, 512),
               "fc.bias": torch.zeros(1000)}
    torch.save(weights, tmp_path / "resnet34.pth")
    overrides = [o for o in TINY if not o.startswith("model.")]
    cfg = load_config(None, [*overrides, "model.name=resnet34_unet", f"model.encoder_weights={tmp_path / 'resnet34.pth'}",
                             "model.decoder_widths=[16,16,8,8,8]", "train.epochs=1", "train.freeze_encoder_epochs=1"])
    result = train(cfg, tgs_dir, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    best = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    summed = weights["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(best["model_state"]["encoder.conv1.weight"], summed)  # frozen: unchanged
    assert torch.equal(best["model_state"]["encoder.bn1.running_mean"], weights["bn1.running_mean"])


def test_freezing_a_model_without_encoder_is_refused(tgs_dir, tmp_path):
    with pytest.raises(ConfigError, match="train.freeze_encoder_epochs"):
        train(tiny_config("train.freeze_encoder_epochs=2"), tgs_dir, run_dir=tmp_path / "r", progress=False,
              log=lambda _: None)
    assert not (tmp_path / "r").exists()  # nothing written for a refused config


def test_trains_on_another_format_isbi_with_its_options(tmp_path):
    """Any binary reader feeds the same trainer: an ISBI-style folder, segmenting membranes (label 0)."""
    from PIL import Image

    from unetlab.data.synthetic import generate_seismic

    images, masks = generate_seismic(8, size=48, seed=3)
    for sub in ("image", "label"):
        (tmp_path / "isbi" / "train" / sub).mkdir(parents=True)
    for i, (image, mask) in enumerate(zip(images, masks)):
        Image.fromarray(image).save(tmp_path / "isbi" / "train" / "image" / f"{i}.png")
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(tmp_path / "isbi" / "train" / "label" / f"{i}.png")
    cfg = tiny_config("data.format=isbi", "data.options={foreground: 0}", "train.epochs=1", "data.input_size=48")
    result = train(cfg, tmp_path / "isbi", run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    assert result.epochs_run == 1
    with pytest.raises(ConfigError, match="data.options.fg"):
        tiny_config("data.format=isbi", "data.options={fg: 0}")
    with pytest.raises(ConfigError, match="data.format"):
        tiny_config("data.format=coco")


def test_kfold_runs_share_one_partition(tgs_dir, tmp_path, tgs_info):
    first = train(tiny_config("train.epochs=1", "data.folds=4", "data.fold=0"), tgs_dir, run_dir=tmp_path / "f0",
                  progress=False, log=lambda _: None)
    folds = json.loads((first.run_dir / "folds.json").read_text())
    assert folds["k"] == 4 and sorted(i for f in folds["folds"] for i in f["val"]) == sorted(
        json.loads((first.run_dir / "split.json").read_text())["train"]
        + json.loads((first.run_dir / "split.json").read_text())["val"])
    second = train(tiny_config("train.epochs=1", "data.folds=4", "data.fold=2",
                               f"data.split_file={first.run_dir / 'folds.json'}"), tgs_dir, run_dir=tmp_path / "f2",
                   progress=False, log=lambda _: None)
    split = json.loads((second.run_dir / "split.json").read_text())
    assert split["val"] == folds["folds"][2]["val"] and split["fold"] == 2
    assert len(split["val"]) in (tgs_info["n"] // 4, tgs_info["n"] // 4 + 1)
    with pytest.raises(ConfigError, match="'data.fold'"):
        tiny_config("data.folds=4", "data.fold=4")
    with pytest.raises(ConfigError, match="'data.folds'"):
        tiny_config("data.folds=1")


def _pets_fixture(root, n=10):
    """Oxford-IIIT Pet layout: RGB JPEGs of different sizes, trimaps 1 pet / 2 background / 3 border."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    lines = []
    for i in range(n):
        height, width = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        yy, xx = np.mgrid[:height, :width]
        inside = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 3) ** 2
        border = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 3 + 2) ** 2) & ~inside
        trimap = np.where(inside, 1, np.where(border, 3, 2)).astype(np.uint8)
        image = rng.integers(0, 80, (height, width, 3)).astype(np.uint8)
        image[inside] = [200, 120, 40]
        Image.fromarray(image).save(root / "images" / f"Cat_{i}.jpg")
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"Cat_{i}.png")
        lines.append(f"Cat_{i} 1 1 1")
    (root / "annotations" / "trainval.txt").write_text("\n".join(lines) + "\n")
    return root


def test_mixed_size_rgb_data_with_an_ignored_border_trains_evaluates_and_predicts(tmp_path):
    from unetlab.api import evaluate, predict
    from unetlab.api import train as api_train

    pets = _pets_fixture(tmp_path / "pets")
    cfg = tiny_config("data.format=oxford-pet", "data.options={border: ignore}", "data.sizing=resize",
                      "data.input_size=48", "model.in_channels=3", "train.epochs=2", "loss.name=bce_dice",
                      "augment.preset=photographic")
    result = api_train(cfg, data_root=pets, run_dir=tmp_path / "run", progress=False, log=lambda _: None)
    assert all(np.isfinite(row["val/loss"]) for row in result.history)
    scores = evaluate(result.run_dir, pets, split="all", log=lambda _: None)["metrics"]
    assert 0.0 <= scores["iou"] <= 1.0
    written = predict(result.run_dir, [pets / "images"], tmp_path / "pred", log=lambda _: None)
    from PIL import Image

    assert Image.open(written[0]).size == Image.open(pets / "images" / "Cat_0.jpg").size
    from unetlab.errors import DataError

    with pytest.raises(DataError, match="data.sizing=resize"):
        api_train(tiny_config("data.format=oxford-pet", "model.in_channels=3"), data_root=pets,
                  run_dir=tmp_path / "run2", progress=False, log=lambda _: None)


@pytest.mark.parametrize("preset", ["none", "seismic", "photographic"])
def test_every_augmentation_pipeline_keeps_ignored_pixels_apart(preset):
    from unetlab.config import AugmentConfig
    from unetlab.data.augment import build_batch_augment

    augment = build_batch_augment(AugmentConfig(preset=preset, shift=0.1, scale=0.1))
    images = torch.rand(4, 3, 32, 32) if preset == "photographic" else torch.rand(4, 1, 32, 32)
    masks = (torch.rand(4, 1, 32, 32) > 0.5).float()
    valid = torch.rand(4, 1, 32, 32) > 0.2
    out_images, out_masks, out_valid = augment(images, masks, valid, torch.Generator().manual_seed(0))
    assert out_images.shape == images.shape and out_masks.shape == masks.shape and out_valid.dtype == torch.bool
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    _, plain_masks, none = augment(images, masks, None, torch.Generator().manual_seed(0))
    assert none is None and plain_masks.shape == masks.shape


def test_old_builtin_augment_config_migrates_to_preset_none_with_its_fields():
    from unetlab.config import AugmentConfig
    from unetlab.data.augment import augment_settings

    old = AugmentConfig.model_validate({"preset": "builtin", "hflip": True, "vflip": False, "shift": 0.1,
                                        "scale": 0.1, "brightness": 0.0, "contrast": 0.0})
    settings = augment_settings(old)
    assert old.preset == "none"
    assert settings.hflip == 0.5 and settings.shift == 0.1 and settings.scale == (0.9, 1.1)
    assert settings.noise_p == 0.0 and settings.brightness == 0.0


def test_multiclass_labels_survive_augmentation_with_ignore():
    from unetlab.config import AugmentConfig
    from unetlab.data.augment import build_batch_augment

    augment = build_batch_augment(AugmentConfig(preset="seismic", shift=0.2))
    masks = torch.randint(0, 5, (4, 1, 32, 32)).float()
    valid = torch.rand(4, 1, 32, 32) > 0.1
    _, out_masks, out_valid = augment(torch.rand(4, 1, 32, 32), masks, valid, torch.Generator().manual_seed(0))
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    assert not out_valid.all()  # pixels from outside the shifted image are ignored, not labelled
