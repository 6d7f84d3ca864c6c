"""Tests for unetlab.config: defaults, YAML loading, --set overrides, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from unetlab.config import Config, apply_overrides, config_from_dict, load_config
from unetlab.errors import ConfigError, UnetlabError

REPO = Path(__file__).resolve().parents[1]
TGS_CONFIG = REPO / "src" / "unetlab" / "configs" / "tgs-salt.yaml"


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- defaults


def test_defaults_are_valid():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg == Config()
    assert cfg.task == "binary"
    assert cfg.model.name == "unet" and cfg.model.classes == 1
    assert cfg.data.input_size == 128 and cfg.data.sizing == "pad"
    assert cfg.loss.name is None  # the task default: bce for binary
    assert cfg.train.batch_size >= 1


def test_config_error_is_a_unetlab_error():
    assert issubclass(ConfigError, UnetlabError)


def test_config_from_dict_empty_gives_defaults():
    assert config_from_dict({}) == Config()


# ----------------------------------------------------------------------------- YAML


def test_yaml_load(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {
        "name": "exp1",
        "train": {"epochs": 3, "batch_size": 4},
        "optim": {"lr": 0.01},
        "model": {"scse": True, "base_width": 8},
    })
    cfg = load_config(path)
    assert cfg.name == "exp1"
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 4
    assert cfg.optim.lr == pytest.approx(0.01)
    assert cfg.model.scse is True and cfg.model.base_width == 8
    # untouched keys keep their defaults
    assert cfg.data == Config().data
    assert cfg.train.precision == Config().train.precision


def test_yaml_load_accepts_str_path(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"seed": 7})
    assert load_config(str(path)).seed == 7


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_config(path) == Config()


def test_repo_tgs_config_loads():
    cfg = load_config(TGS_CONFIG)
    assert cfg.name == "tgs-salt"
    assert cfg.loss.name == "bce_lovasz"
    assert cfg.model.scse is True
    assert cfg.schedule.name == "onecycle"
    assert cfg.train.averaging == "ema"
    assert cfg.train.monitor == "val/tgs_map" and cfg.train.monitor_mode == "max"
    assert cfg.eval.tta == "none"
    assert cfg.augment.vflip is False


def test_to_yaml_round_trip(tmp_path):
    cfg = load_config(TGS_CONFIG, ["train.epochs=3", "data.root=/some/where", "train.max_minutes=null"])
    text = cfg.to_yaml()
    again = config_from_dict(yaml.safe_load(text))
    assert again == cfg
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert load_config(path) == cfg
    assert load_config(path).to_yaml() == text


def test_to_dict_is_plain_json_types():
    d = Config().to_dict()
    assert set(d) >= {"name", "seed", "task", "data", "model", "loss", "optim", "schedule",
                      "augment", "train", "eval"}
    assert isinstance(d["data"], dict) and d["model"]["name"] == "unet"


# ----------------------------------------------------------------------------- --set overrides


def test_overrides_parse_int_float_bool_null_str():
    cfg = load_config(None, [
        "train.epochs=5",
        "optim.lr=0.0005",
        "optim.weight_decay=1e-4",  # YAML 1.1 reads this as a string; pydantic parses it
        "augment.hflip=false",
        "train.channels_last=true",
        "train.max_minutes=null",
        "train.num_threads=2",
        "data.root=/data/tgs",
        "model.depth=3",
        "augment.shift=0.1",
    ])
    assert cfg.train.epochs == 5 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.lr == pytest.approx(5e-4)
    assert cfg.optim.weight_decay == pytest.approx(1e-4)
    assert cfg.augment.hflip is False
    assert cfg.train.channels_last is True
    assert cfg.train.max_minutes is None
    assert cfg.train.num_threads == 2
    assert cfg.data.root == "/data/tgs"
    assert cfg.model.depth == 3
    assert cfg.augment.shift == pytest.approx(0.1)


def test_overrides_apply_after_yaml(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": {"epochs": 3, "batch_size": 4}})
    cfg = load_config(path, ["train.epochs=7", "train.max_minutes=2.5"])
    assert cfg.train.epochs == 7  # override wins
    assert cfg.train.batch_size == 4  # YAML kept
    assert cfg.train.max_minutes == pytest.approx(2.5)


def test_override_to_null_after_yaml_value(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": {"max_minutes": 10}})
    assert load_config(path, ["train.max_minutes=null"]).train.max_minutes is None


def test_override_value_may_contain_equals_sign():
    cfg = load_config(None, ["data.root=/x/a=b"])
    assert cfg.data.root == "/x/a=b"


def test_override_later_wins():
    assert load_config(None, ["seed=1", "seed=2"]).seed == 2


def test_apply_overrides_nested_dict_in_place():
    data: dict = {"train": {"epochs": 1}}
    out = apply_overrides(data, ["train.batch_size=8", "model.scse=yes", "name=x"])
    assert out is data
    assert data == {"train": {"epochs": 1, "batch_size": 8}, "model": {"scse": True}, "name": "x"}


@pytest.mark.parametrize("text", ["train.epochs", "=5", "  =5"])
def test_malformed_override_refused(text):
    with pytest.raises(ConfigError) as info:
        load_config(None, [text])
    assert repr(text) in str(info.value) or text in str(info.value)


def test_override_into_a_value_refused():
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(None, ["train.batch_size=4", "train.batch_size.x=1"])


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_in_yaml(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"trian": {"epochs": 3}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'trian'" in message and "unknown" in message
    assert str(path) in message


def test_unknown_nested_key_in_yaml(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": {"epochz": 3}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "'train.epochz'" in str(info.value) and "unknown" in str(info.value)


def test_unknown_top_level_key_via_set():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["foo.bar=1"])
    assert "'foo'" in str(info.value) and "unknown" in str(info.value)


def test_unknown_top_level_scalar_via_set():
    with pytest.raises(ConfigError, match="'lr'"):
        load_config(None, ["lr=0.1"])


def test_unknown_nested_key_via_set():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.widht=3"])
    assert "'model.widht'" in str(info.value) and "--set" in str(info.value)


def test_unknown_key_in_config_from_dict():
    with pytest.raises(ConfigError, match=r"'augment\.rotate'"):
        config_from_dict({"augment": {"rotate": 10}})


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("override, key", [
    ("train.batch_size=0", "train.batch_size"),
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("data.sizing=foo", "data.sizing"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.lr=0", "optim.lr"),
    ("optim.name=lbfgs", "optim.name"),
    ("data.val_fraction=1.0", "data.val_fraction"),
    ("data.val_fraction=0", "data.val_fraction"),
    ("data.input_size=4", "data.input_size"),
    ("model.depth=0", "model.depth"),
    ("model.depth=8", "model.depth"),
    ("model.dropout=1.0", "model.dropout"),
    ("loss.name=hinge", "loss.name"),
    ("loss.lovasz_start=1.5", "loss.lovasz_start"),
    ("augment.shift=0.9", "augment.shift"),
    ("eval.threshold=1", "eval.threshold"),
    ("train.precision=fp8", "train.precision"),
    ("train.batch_size=abc", "train.batch_size"),
    ("task=multiclass", "model.classes"),
    ("task=regression", "task"),
])
def test_bad_value_refused_naming_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert f"'{key}'" in message
    assert "bad value" in message


def test_bad_value_in_yaml_names_key_and_file(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": {"batch_size": 0}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "'train.batch_size'" in str(info.value) and str(path) in str(info.value)


def test_section_replaced_by_scalar_refused():
    with pytest.raises(ConfigError, match="'data'"):
        load_config(None, ["data=5"])


def test_classes_not_one_with_binary_task_refused():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.classes=2"])
    assert "model.classes" in str(info.value)


def test_classes_not_one_in_yaml_refused(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"task": "binary", "model": {"classes": 3}})
    with pytest.raises(ConfigError, match=r"model\.classes"):
        load_config(path)


def test_validate_assignment():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.train.batch_size = 0


# ----------------------------------------------------------------------------- file errors


def test_missing_file_names_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "not found" in str(info.value)


def test_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_config(tmp_path)


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epochs: 3\n  batch_size: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "YAML" in str(info.value)


def test_top_level_not_a_mapping_names_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- built-in recipes


def test_builtin_recipe_by_name_from_any_directory(tmp_path, monkeypatch):
    from unetlab.recipes import recipe_description, recipe_names

    monkeypatch.chdir(tmp_path)
    assert recipe_names() == ["case-study", "tgs-salt"]
    assert load_config("tgs-salt") == load_config(TGS_CONFIG)
    assert load_config("case-study", ["train.epochs=3"]).name == "case-study"
    assert all(recipe_description(name) for name in recipe_names())  # `unetlab configs` shows them


def test_existing_path_wins_over_a_builtin_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tgs-salt").write_text("name: mine\n")
    assert load_config("tgs-salt").name == "mine"


@pytest.mark.parametrize("given, what", [("tgs_salt", "no such config file or built-in recipe"),
                                         ("configs/tgs-salt.yaml", "config file not found")])
def test_unknown_recipe_lists_the_builtins(given, what, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(given)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{given}: {what}")
    assert "case-study, tgs-salt" in message and "YAML" in message


def test_bad_value_in_a_builtin_names_the_recipe():
    with pytest.raises(ConfigError, match=r"tgs-salt \(built-in recipe\) with --set: bad value for 'train.epochs'"):
        load_config("tgs-salt", ["train.epochs=0"])


# ----------------------------------------------------------------------------- known defects


def test_numeric_looking_value_for_string_field():
    cfg = load_config(None, ["name=2024", "data.root=2024"])
    assert cfg.name == "2024" and cfg.data.root == "2024"


def test_photographic_preset_needs_rgb_input():
    with pytest.raises(ConfigError, match="photographic"):
        load_config(None, ["augment.preset=photographic"])
    assert load_config(None, ["augment.preset=photographic", "model.in_channels=3"]).augment.preset == "photographic"


def test_min_area_is_binary_only_and_not_negative():
    assert load_config(None, ["eval.min_area=20"]).eval.min_area == 20
    with pytest.raises(ConfigError, match=r"'eval\.min_area'.*multiclass"):
        load_config(None, ["task=multiclass", "model.classes=3", "eval.min_area=20"])
    with pytest.raises(ConfigError, match=r"'eval\.min_area'"):
        load_config(None, ["eval.min_area=-1"])


def test_loss_and_model_names_come_from_the_registries():
    with pytest.raises(ConfigError, match=r"bad value for 'loss\.name': unknown loss preset 'hinge'; choose one of "
                                          r"bce, dice, bce_dice"):
        load_config(None, ["loss.name=hinge"])
    with pytest.raises(ConfigError, match=r"bad value for 'loss\.terms\.0\.name': unknown loss term 'hinge'; "
                                          r"choose one of bce, ce, dice, focal, lovasz, tversky"):
        load_config(None, ["loss.terms=[{name: hinge}]"])
    cfg = load_config(None, ["model.name=unet-strided2"])  # a named variant is a model like any other
    assert cfg.model.model_extra["downsample"] == "strided" and cfg.model.model_extra["strided_kernel"] == 2
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
