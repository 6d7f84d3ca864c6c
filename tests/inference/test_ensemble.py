"""Ensembles (inference/ensemble.py): the mean of the members' probabilities, decoded once, through
`EnsemblePredictor`, `unetlab predict --ensemble` and `unetlab evaluate --ensemble`.

The members are copies of the shared `tiny_run` whose weights are nudged (`_nudged_run`): cheap, and
their probabilities clearly differ from tiny_run's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from run_fixtures import assert_one_line_error, multiclass_config, run_cli

from unetlab.data.io import read_binary_mask, read_grey
from unetlab.data.synthetic import generate_seismic
from unetlab.errors import UnetlabError
from unetlab.inference.ensemble import EnsemblePredictor
from unetlab.inference.predict import MANIFEST
from unetlab.inference.predictor import Predictor
from unetlab.models import create_model
from unetlab.run_folder import RunFolder


def _nudged_run(tiny_run: Path, where: Path, seed: int) -> Path:
    """A copy of `tiny_run` whose best.pt weights have small seeded noise added: a second, different model."""
    folder = RunFolder(shutil.copytree(tiny_run, where))
    payload = folder.load_checkpoint("best")
    generator = torch.Generator().manual_seed(seed)
    payload["model_state"] = {key: value + 0.2 * torch.randn(value.shape, generator=generator)
                              if value.is_floating_point() else value
                              for key, value in payload["model_state"].items()}
    folder.save_checkpoint("best", payload)
    return folder.path


def _multiclass_run(tiny_run: Path, where: Path, seed: int, class_names=("a", "b", "c")) -> Path:
    """A copy of `tiny_run` turned into a 3-class run with seeded random weights."""
    folder = RunFolder(shutil.copytree(tiny_run, where))
    config = multiclass_config()
    torch.manual_seed(seed)
    payload = folder.load_checkpoint("best")
    payload.update(config=config.to_dict(), class_names=list(class_names),
                   model_state=create_model(config.model.name, **config.model.options()).state_dict())
    folder.save_checkpoint("best", payload)
    return folder.path


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> tuple[Path, Path]:
    """Two binary runs with the same split: tiny_run itself (read-only) and a nudged copy."""
    return tiny_run, _nudged_run(tiny_run, tmp_path_factory.mktemp("ensemble") / "second", seed=1)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Images of three sizes: 101x101 twice (batched together), and 64x80."""
    big, _ = generate_seismic(2, size=101, seed=5)
    small, _ = generate_seismic(1, size=(64, 80), seed=6)
    return [big[0], big[1], small[0]]


@pytest.fixture
def image_dir(images, tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"i{k}.png")
    return folder


def _threshold_of(run: Path) -> float:
    return float(RunFolder(run).load_checkpoint("best")["threshold"])


# ---------------------------------------------------------------- the mean of the probabilities

@pytest.mark.parametrize("options", [{}, {"tta": "hflip"}, {"tile": 64, "overlap": 16}])
def test_an_ensemble_of_one_run_is_that_run_bit_for_bit(runs, images, options):
    single = Predictor.load(runs[0]).predict_proba(images, **options)
    alone = EnsemblePredictor.load([runs[0]]).predict_proba(images, **options)
    for ours, theirs in zip(alone, single):
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("options", [{}, {"tta": "hflip"}, {"tile": 64, "overlap": 16}])
def test_two_runs_give_the_mean_of_their_probabilities(runs, images, options):
    first = Predictor.load(runs[0]).predict_proba(images, **options)
    second = Predictor.load(runs[1]).predict_proba(images, **options)
    mean = EnsemblePredictor.load(list(runs)).predict_proba(images, **options)
    for a, b, m, image in zip(first, second, mean, images):
        assert np.abs(a - b).max() > 0.05  # the members really differ, so the mean is not either one
        assert m.shape == image.shape
        np.testing.assert_array_equal(m, (a + b) / np.float32(2))


def test_the_same_run_twice_is_that_run(runs, images):
    single = Predictor.load(runs[0]).predict_proba(images)
    twice = EnsemblePredictor.load([runs[0], runs[0]]).predict_proba(images)
    for ours, theirs in zip(twice, single):
        np.testing.assert_array_equal(ours, theirs)


def test_multiclass_members_average_their_softmax(tiny_run, tmp_path, images):
    first, second = (_multiclass_run(tiny_run, tmp_path / f"mc{seed}", seed) for seed in (1, 2))
    a = Predictor.load(first).predict_proba(images)
    b = Predictor.load(second).predict_proba(images)
    ensemble = EnsemblePredictor.load([first, second])
    mean = ensemble.predict_proba(images)
    for pa, pb, m in zip(a, b, mean):
        assert m.shape[0] == 3 and np.abs(pa - pb).max() > 0.01
        np.testing.assert_array_equal(m, (pa + pb) / np.float32(2))
        np.testing.assert_allclose(m.sum(axis=0), 1.0, atol=1e-5)  # still a distribution
        np.testing.assert_array_equal(ensemble.labels(m), m.argmax(axis=0))
    assert ensemble.task.class_names == ["a", "b", "c"]


def test_members_of_other_tasks_or_classes_are_refused_naming_both(runs, tiny_run, tmp_path):
    multiclass = _multiclass_run(tiny_run, tmp_path / "mc", 1)
    renamed = _multiclass_run(tiny_run, tmp_path / "renamed", 1, class_names=("a", "b", "z"))
    for first, other in ((runs[0], multiclass), (multiclass, renamed)):
        with pytest.raises(UnetlabError) as refused:
            EnsemblePredictor.load([first, other])
        message = str(refused.value)
        assert "\n" not in message and "--ensemble" in message
        for run in (first, other):
            assert str(RunFolder.resolve_checkpoint(run)) in message


# ---------------------------------------------------------------- decoding: explicit, else the first run's

def _with_operating_point(run: Path, where: Path, threshold: float) -> Path:
    """A copy of `run` with a saved operating point for its best.pt."""
    folder = RunFolder(shutil.copytree(run, where))
    checkpoint = folder.checkpoint_path("best")
    folder.write_operating_point({"threshold": threshold, "min_area": 7, "min_component": 3,
                                  "criterion": "max-tgs", "checkpoint": "best", "checkpoint_sha256":
                                  RunFolder.checkpoint_digest(checkpoint), "split": "val", "data": "x"})
    return folder.path


def test_a_saved_operating_point_of_the_first_run_is_not_applied(runs, tmp_path, image_dir, images, capsys):
    first = _with_operating_point(runs[0], tmp_path / "pointed", threshold=0.9)
    assert Predictor.load(first).threshold == 0.9  # a single run does use it
    ensemble = EnsemblePredictor.load([first, runs[1]])
    assert (ensemble.threshold, ensemble.min_area, ensemble.min_component) == (_threshold_of(runs[0]), 0, 0)
    assert ensemble.operating_point is None and "operating-point.json" in ensemble.notes[0]

    out = tmp_path / "out"
    code, stdout, err = run_cli(["predict", str(first), str(image_dir), "--out", str(out), "--ensemble",
                                 str(runs[1])], capsys)
    assert code == 0, err
    assert "operating-point.json" in stdout
    manifest = json.loads((out / MANIFEST).read_text())
    assert "not applied" in manifest["notes"][0]
    mean = ensemble.predict_proba(images)
    for k, prob in enumerate(mean):
        np.testing.assert_array_equal(read_binary_mask(out / "masks" / f"i{k}.png"), prob > _threshold_of(runs[0]))

    explicit = tmp_path / "explicit"
    code, _, err = run_cli(["predict", str(first), str(image_dir), "--out", str(explicit), "--ensemble",
                            str(runs[1]), "--threshold", "0.3"], capsys)
    assert code == 0, err
    for k, prob in enumerate(mean):
        np.testing.assert_array_equal(read_binary_mask(explicit / "masks" / f"i{k}.png"), prob > 0.3)


# ---------------------------------------------------------------- the CLI

def test_predict_with_ensemble_writes_the_mean_masks_and_lists_both_runs(runs, image_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["predict", str(runs[0]), str(image_dir), "--out", str(out), "--ensemble", str(runs[1])],
                           capsys)
    assert code == 0, err
    manifest = json.loads((out / MANIFEST).read_text())
    assert [r["checkpoint"] for r in manifest["runs"]] == [str(RunFolder(run).checkpoint_path("best")) for run in runs]
    assert [r["run"] for r in manifest["runs"]] == [str(run) for run in runs]
    assert "notes" not in manifest  # neither run has an operating point
    mean = EnsemblePredictor.load(list(runs)).predict_proba(images)
    single = Predictor.load(runs[0]).predict_proba(images)
    threshold = _threshold_of(runs[0])
    assert any(((m > threshold) != (s > threshold)).any() for m, s in zip(mean, single))  # not run 1's masks
    for k, prob in enumerate(mean):
        np.testing.assert_array_equal(read_binary_mask(out / "masks" / f"i{k}.png"), prob > threshold)

    # a later single-run predict into the same folder lists only its own run
    code, _, err = run_cli(["predict", str(runs[0]), str(image_dir), "--out", str(out)], capsys)
    assert code == 0, err
    assert [r["run"] for r in json.loads((out / MANIFEST).read_text())["runs"]] == [str(runs[0])]


def _with_other_validation(run: Path, where: Path) -> Path:
    """A copy of `run` validated on other images: one val id swapped with a train id (another k-fold fold)."""
    folder = RunFolder(shutil.copytree(run, where))
    split = json.loads(folder.split_path.read_text())
    split["train"][0], split["val"][0] = split["val"][0], split["train"][0]
    folder.split_path.write_text(json.dumps(split))
    return folder.path


def test_evaluate_refuses_auto_split_when_members_were_validated_on_other_images(runs, tgs_dir, tmp_path, capsys):
    first = Path(shutil.copytree(runs[0], tmp_path / "first"))  # evaluate writes into the first run
    other = _with_other_validation(runs[1], tmp_path / "other-fold")
    before = sorted(p.name for p in (first / "evaluation").iterdir())
    for split in ("auto", "val"):
        code, _, err = run_cli(["evaluate", str(first), "--data", str(tgs_dir), "--split", split, "--ensemble",
                                str(other)], capsys)
        assert_one_line_error(code, err, f"--split {split}", str(other), "validation", "--split all")
    assert sorted(p.name for p in (first / "evaluation").iterdir()) == before

    code, _, err = run_cli(["evaluate", str(first), "--data", str(tgs_dir), "--split", "all", "--ensemble",
                            str(other)], capsys)
    assert code == 0, err
    result = json.loads((first / "evaluation" / "ensemble2-best-all.json").read_text())
    assert result["checkpoint"] == "ensemble2-best" and result["images"] == 16
    assert [m["run"] for m in result["members"]] == [str(first), str(other)]
    # the scores are those of the mean probabilities decoded at the first run's threshold
    from unetlab.data.formats.registry import load_for_config

    ensemble = EnsemblePredictor.load([first, other])
    dataset = load_for_config(ensemble.config, tgs_dir)
    probs = np.stack(ensemble.predict_proba(list(dataset.images)))
    predicted, truth = probs > _threshold_of(runs[0]), dataset.masks.astype(bool)
    assert result["per_image"]["tp"] == (predicted & truth).sum(axis=(1, 2)).tolist()
    assert result["per_image"]["fp"] == (predicted & ~truth).sum(axis=(1, 2)).tolist()
    report = (first / "report.md").read_text()
    assert "ensemble2-best" in report and str(RunFolder(other).checkpoint_path("best")) in report


def test_evaluate_ensemble_on_a_shared_validation_split(runs, tgs_dir, tmp_path, capsys):
    first = Path(shutil.copytree(runs[0], tmp_path / "first"))
    single = (first / "evaluation" / "best-val.json").read_bytes()  # written when tiny_run was trained
    code, _, err = run_cli(["evaluate", str(first), "--data", str(tgs_dir), "--ensemble", str(runs[1])], capsys)
    assert code == 0, err
    result = json.loads((first / "evaluation" / "ensemble2-best-val.json").read_text())
    assert result["split"] == "val"
    assert sorted(result["per_image"]["ids"]) == sorted(json.loads((first / "split.json").read_text())["val"])
    assert (first / "evaluation" / "best-val.json").read_bytes() == single  # the one model's result is kept


def test_evaluate_refuses_to_save_an_ensembles_operating_point(runs, tgs_dir, tmp_path, capsys):
    first = Path(shutil.copytree(runs[0], tmp_path / "first"))
    code, _, err = run_cli(["evaluate", str(first), "--data", str(tgs_dir), "--ensemble", str(runs[1]),
                            "--choose", "max-tgs", "--save"], capsys)
    assert_one_line_error(code, err, "--save", "ensemble")
    assert not (first / "operating-point.json").exists()


def test_a_segy_volume_is_predicted_by_the_ensemble(runs, tmp_path):
    """predict hands the ensemble to the SEG-Y path like a Predictor: slice by slice, the mean probabilities."""
    import segyio.tools

    from unetlab.inference.predict import predict

    volume = tmp_path / "vol.sgy"
    segyio.tools.from_array(str(volume), np.random.default_rng(0).normal(size=(3, 40, 48)).astype(np.float32))
    options = {"write": "probability", "formats": ("npy",), "clip": 2.0}
    cubes = {}
    for name, members in (("first", [runs[0]]), ("second", [runs[1]]), ("both", list(runs))):
        predict(members[0], [volume], tmp_path / name, segy=options, ensemble=members[1:], log=lambda _: None)
        cubes[name] = np.load(tmp_path / name / "vol-salt-probability.npy")
    assert np.abs(cubes["first"] - cubes["second"]).max() > 0.05
    np.testing.assert_allclose(cubes["both"], (cubes["first"] + cubes["second"]) / 2, atol=1e-6)


def test_evaluate_a_multiclass_ensemble(tiny_run, multiclass_data, tmp_path, capsys):
    """tiny_run's split names TGS ids, so on this data --split auto scores all images; the confusion matrix is
    that of the argmax of the mean softmax over the labelled pixels."""
    first, second = (_multiclass_run(tiny_run, tmp_path / f"mc{seed}", seed) for seed in (1, 2))
    code, _, err = run_cli(["evaluate", str(first), "--data", str(multiclass_data), "--ensemble", str(second)], capsys)
    assert code == 0, err
    result = json.loads((first / "evaluation" / "ensemble2-best-all.json").read_text())
    assert result["task"] == "multiclass" and [m["run"] for m in result["members"]] == [str(first), str(second)]
    from unetlab.data.formats.registry import load_for_config

    ensemble = EnsemblePredictor.load([first, second])
    dataset = load_for_config(ensemble.config, multiclass_data)
    labels = np.stack([p.argmax(axis=0) for p in ensemble.predict_proba(list(dataset.images))])
    labelled = dataset.valid if dataset.valid is not None else np.ones(dataset.masks.shape, bool)
    assert not labelled.all()  # the ignored top rows count nowhere
    expected = np.zeros((3, 3), np.int64)
    np.add.at(expected, (dataset.masks[labelled].astype(np.int64), labels[labelled]), 1)
    assert result["confusion"] == expected.tolist()
