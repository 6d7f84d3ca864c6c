"""`studies/spec.py`: study files, the cells' configs, errors naming the key or the variant, fingerprints."""

from __future__ import annotations

import pytest
import yaml

from unetlab.config import load_config
from unetlab.errors import ConfigError
from unetlab.studies.spec import load_study, parse_study, study_description, study_names

BUILTIN = {"phases", "q51-downsampling", "q52-skips", "q53-fcn", "q54-threshold", "stem-s2d"}


def _spec(**changes):
    data = {"name": "t", "base": "tgs-salt", "seeds": [0, 1], "budget": {"epochs": 3},
            "variants": {"concat": [], "add": ["model.name=unet-add"]}, **changes}
    return parse_study(data, "t.yaml")


def test_every_builtin_study_validates_and_describes_itself():
    assert set(study_names()) == BUILTIN
    for name in study_names():
        spec = load_study(name)
        spec.validate_all()  # every cell's config, models built on the meta device
        assert spec.name == name and len(spec.seeds) == 3 and spec.baseline in spec.variants
        assert study_description(name) and spec.description
        assert spec.budget.matched in spec.description  # "matched on epochs"
        assert spec.fingerprint() == load_study(name).fingerprint()
    assert load_study("phases").cell_config("bilinear", 0).model.upsample == "bilinear"
    assert load_study("phases").cell_config("baseline", 0).task == "multiclass"
    q51 = load_study("q51-downsampling").cell_config("strided2", 1)
    assert (q51.model.downsample, q51.model.strided_kernel, q51.seed, q51.train.epochs) == ("strided", 2, 1, 15)
    assert q51.train.max_minutes is None  # the recipe's 57-minute limit is replaced by the epoch budget
    fcn = load_study("q53-fcn").cell_config("fcn-matched", 0)
    assert fcn.model.name == "fcn" and list(fcn.model.widths) == [30, 90, 270, 700] and fcn.augment.crop == 64


def test_cell_config_is_base_set_budget_variant_seed_and_split(tmp_path):
    spec = _spec(set=["train.batch_size=8"], budget={"minutes": 2.5})
    cfg = spec.cell_config("add", 1, data_root=tmp_path, split_file=tmp_path / "split.json")
    assert (cfg.model.name, cfg.model.skip, cfg.seed, cfg.train.batch_size) == ("unet-add", "add", 1, 8)
    assert cfg.train.max_minutes == 2.5 and cfg.train.epochs == load_config("tgs-salt").train.epochs  # the recipe's cap
    assert cfg.data.root == str(tmp_path) and cfg.data.split_file == str(tmp_path / "split.json")
    assert spec.cells() == [("concat", 0), ("add", 0), ("concat", 1), ("add", 1)]
    assert spec.baseline == "concat" and spec.metric_for("binary") == "val/tgs_map"


def test_errors_name_the_key_or_the_variant():
    cases = [
        (dict(varients={}), "t.yaml: unknown study key 'varients'"),
        (dict(budget={"epochs": 3, "minutes": 1}), "bad value for 'budget': give exactly one of epochs or minutes"),
        (dict(baseline="max"), "bad value for 'baseline': 'max' is not a variant"),
        (dict(seeds=[1, 1]), "bad value for 'seeds'"),
        (dict(variants={"a/b": []}), "bad value for 'variants'"),
        (dict(metric="val/nope"), "bad value for 'metric'"),
    ]
    with pytest.raises(ConfigError, match="bad value for 'metric': val/miou is not scored for binary cells"):
        _spec(metric="val/miou").validate_all()
    for changes, needle in cases:
        with pytest.raises(ConfigError) as caught:
            _spec(**changes)
        assert needle in str(caught.value), (needle, str(caught.value))


@pytest.mark.parametrize("overrides, needles", [
    (["model.skip=plus"], ["study t, variant 'bad': bad value for 'model.skip'"]),
    (["model.skipp=add"], ["study t, variant 'bad': unknown config key 'model.skipp'"]),
    (["data.val_fraction=0.5"], ["variant 'bad'", "data.val_fraction", "one split"]),
    (["model.name=unet-max", "model.skip=concat"], []),  # the variant itself may override a variant's option
])
def test_a_bad_variant_is_refused_before_anything_trains(overrides, needles):
    spec = _spec(variants={"concat": [], "bad": overrides})
    if not needles:
        spec.validate_all()
        return
    with pytest.raises(ConfigError) as caught:
        spec.validate_all()
    for needle in needles:
        assert needle in str(caught.value), (needle, str(caught.value))


def test_a_registered_variant_undone_by_the_base_is_refused():
    spec = _spec(set=["model.skip=concat"])
    with pytest.raises(ConfigError, match=r"variant 'add': model.name=unet-add means skip='add'"):
        spec.validate_all()


def test_unknown_study_lists_the_builtins(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_study("q99")
    assert "q99: no such study file or built-in study; built-in studies: phases, q51-downsampling" in str(caught.value)
    with pytest.raises(ConfigError, match="study file not found"):
        load_study(tmp_path / "missing.yaml")


def test_a_study_file_finds_its_base_beside_it_and_fingerprints_only_the_grid(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {batch_size: 4}\n")
    data = {"name": "local", "base": "base.yaml", "seeds": [0], "budget": {"epochs": 1}, "variants": {"a": []}}
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(data))
    spec = load_study(tmp_path / "local.yaml")
    assert spec.cell_config("a", 0).train.batch_size == 4
    same = load_study(tmp_path / "local.yaml").fingerprint()
    assert parse_study({**data, "description": "other words"}, source_dir=tmp_path).fingerprint() == same
    assert parse_study({**data, "variants": {"a": ["optim.lr=0.01"]}}, source_dir=tmp_path).fingerprint() != same
    assert parse_study({**data, "seeds": [0, 1]}, source_dir=tmp_path).fingerprint() != same
