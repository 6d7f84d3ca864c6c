"""A study spec: one base config, named variants (config overrides) and seeds; each variant x seed is a cell.

    # one line: what the study asks (the first comment line is its description in listings)
    name: q52-skips
    description: concat vs add vs max vs min vs no skips; matched on epochs
    base: tgs-salt                    # a built-in recipe name or a config path (relative to this file)
    set: [train.max_minutes=null]     # overrides for every cell, as `--set`
    seeds: [0, 1, 2]
    budget: {epochs: 15}              # or {minutes: 12}: train.epochs / train.max_minutes; the matched quantity
    baseline: concat                  # the variant the others are compared with (default: the first)
    variants:
      concat: []
      add: [model.name=unet-add]
    metric: val/tgs_map               # optional: default val/tgs_map (binary), val/miou (multiclass)
    split_seed: 0                     # optional: seed of the study's one split (default: the base config's seed)
    analysis: threshold               # optional: an extra analysis of the report (studies/report.py)

A cell's config is base + `set` + budget + the variant's overrides + `seed=<seed>` + `data.split_file`
pointing at the study's split.json (so seeds change initialisation and augmentation, never the
validation images). Built-in studies are `unetlab/studies/builtin/<name>.yaml`; like recipes, an
existing path wins over a built-in name.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from unetlab.config import Config, apply_overrides, config_from_dict
from unetlab.errors import ConfigError, UnetlabError
from unetlab.evaluation.evaluate import METRIC_NAMES, MULTICLASS_METRIC_NAMES
from unetlab.models.registry import variant_of
from unetlab.recipes import STUDIES, read_config_source

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # names become folder names
#: Config keys that define the study's one split: a variant may not change them (`set` may, for every cell).
SPLIT_KEYS = ("task", "data.format", "data.options", "data.val_fraction", "data.coverage_bins", "data.folds")


class Budget(BaseModel):
    """Exactly one of `epochs` (matched on epochs: train.epochs=N, no time limit) or `minutes`
    (matched on wall-clock: train.max_minutes=M, train.epochs stays an upper bound)."""

    model_config = ConfigDict(extra="forbid")
    epochs: Optional[int] = Field(None, ge=1)
    minutes: Optional[float] = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _exactly_one(self) -> "Budget":
        if (self.epochs is None) == (self.minutes is None):
            raise ValueError("give exactly one of epochs or minutes, e.g. {epochs: 15}")
        return self

    @property
    def matched(self) -> str:
        return "epochs" if self.epochs is not None else "minutes"

    def overrides(self) -> list[str]:
        if self.epochs is not None:
            return [f"train.epochs={self.epochs}", "train.max_minutes=null"]
        return [f"train.max_minutes={self.minutes}"]


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    description: str = ""
    base: str = Field(description="a built-in recipe name or a config file (relative to the study file)")
    overrides: list[str] = Field(default_factory=list, alias="set")
    seeds: list[int] = Field(min_length=1)
    budget: Budget
    baseline: Optional[str] = None
    variants: dict[str, list[str]] = Field(min_length=1)
    metric: Optional[str] = None
    split_seed: Optional[int] = None
    analysis: Optional[Literal["threshold"]] = None
    _source_dir: Optional[Path] = PrivateAttr(None)  # a relative `base` is found beside the study file

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not _SAFE_NAME.match(name):
            raise ValueError(f"{name!r}: use letters, digits, '-', '_' and '.' (it names folders)")
        return name

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{seeds}: each seed once")
        return seeds

    @field_validator("variants", mode="before")
    @classmethod
    def _variant_lists(cls, variants: Any) -> Any:
        if isinstance(variants, dict):  # `baseline:` with nothing after it is a variant without overrides
            return {name: [] if value is None else value for name, value in variants.items()}
        return variants

    @field_validator("variants")
    @classmethod
    def _safe_variant_names(cls, variants: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in variants:
            if not _SAFE_NAME.match(name):
                raise ValueError(f"variant {name!r}: use letters, digits, '-', '_' and '.' (it names a folder)")
        return variants

    @model_validator(mode="after")
    def _known_baseline_and_metric(self) -> "StudySpec":
        if self.baseline is None:
            self.baseline = next(iter(self.variants))
        if self.baseline not in self.variants:
            raise ConfigError(f"bad value for 'baseline': {self.baseline!r} is not a variant; "
                              f"choose one of {', '.join(self.variants)}")
        known = {f"val/{key}" for key in (*METRIC_NAMES, *MULTICLASS_METRIC_NAMES)}
        if self.metric is not None and self.metric not in known and not self.metric.startswith("val/iou/"):
            raise ConfigError(f"bad value for 'metric': {self.metric!r}; choose one of {', '.join(sorted(known))}")
        return self

    # ------------------------------------------------------------------ the grid

    def cells(self) -> list[tuple[str, int]]:
        """(variant, seed) of every cell, seed by seed (a study stopped half-way has every variant at its first
        seeds)."""
        return [(variant, seed) for seed in self.seeds for variant in self.variants]

    def metric_for(self, task: str) -> str:
        """The metric the study compares cells on (`val/...`)."""
        return self.metric or ("val/tgs_map" if task == "binary" else "val/miou")

    # ------------------------------------------------------------------ configs

    def base_data(self) -> dict[str, Any]:
        """The base config as a raw mapping (unresolved: a variant's model.name keeps its own option defaults)."""
        base = self.base
        if self._source_dir is not None and (self._source_dir / base).is_file():
            base = str(self._source_dir / base)
        text, source = read_config_source(base)
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"study {self.name}: base {source}: the top level must be a mapping of sections")
        return data

    def _build(self, extra: list[str], source: str, data_root: str | Path | None,
               split_file: str | Path | None) -> Config:
        data = copy.deepcopy(self.base_data())
        try:
            apply_overrides(data, extra)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        paths = {"root": data_root, "split_file": split_file}
        if any(value is not None for value in paths.values()) and isinstance(data.setdefault("data", {}), dict):
            data["data"].update({key: str(value) for key, value in paths.items() if value is not None})
        return config_from_dict(data, source)

    def common_config(self, data_root: str | Path | None = None) -> Config:
        """Base + `set` + budget: what every cell shares (the split is made from it)."""
        config = self._build([*self.overrides, *self.budget.overrides()],
                             f"study {self.name} (base {self.base} with set and budget)", data_root, None)
        if config.data.folds or config.data.split_file:
            raise ConfigError(f"study {self.name}: bad value for 'data.folds' / 'data.split_file': a study makes "
                              "its own single train/validation split; remove them from the base and `set`")
        return config

    def cell_config(self, variant: str, seed: int, data_root: str | Path | None = None,
                    split_file: str | Path | None = None) -> Config:
        """The validated config of cell (variant, seed); ConfigError naming the study and the variant."""
        if variant not in self.variants:
            raise ConfigError(f"study {self.name}: no variant {variant!r}; variants: {', '.join(self.variants)}")
        source = f"study {self.name}, variant '{variant}'"
        extra = [f"name={self.name}-{variant}-seed{seed}", *self.overrides, *self.budget.overrides(),
                 *self.variants[variant], f"seed={seed}"]
        config = self._build(extra, source, data_root, split_file)
        _check_variant_options(config, self.variants[variant], source)
        _check_split_keys(config, self.common_config(), source)
        return config

    def split_seed_for(self, common: Config) -> int:
        return self.split_seed if self.split_seed is not None else common.seed

    def validate_all(self) -> None:
        """Build every cell's config (models checked on the meta device): a bad variant is refused before
        anything trains."""
        task = self.common_config().task
        names = METRIC_NAMES if task == "binary" else MULTICLASS_METRIC_NAMES
        key = self.metric_for(task).removeprefix("val/")
        if key not in names and not (task == "multiclass" and key.startswith("iou/")):
            raise ConfigError(f"study {self.name}: bad value for 'metric': {self.metric} is not scored for {task} "
                              f"cells; choose one of {', '.join('val/' + name for name in names)}")
        for variant in self.variants:
            for seed in self.seeds:
                self.cell_config(variant, seed)

    def fingerprint(self) -> str:
        """A stable hash of what defines the grid and the cells' configs (not name, description, baseline,
        analysis, data.root or the split file's path). A config key added to unetlab later changes it;
        `runner.check_grid` then compares the finished cells' configs themselves."""
        common = self.common_config()
        cells = {f"{variant}/seed-{seed}": cell_identity(self.cell_config(variant, seed))
                 for variant, seed in sorted(self.cells())}
        payload = {"cells": cells, "metric": self.metric_for(common.task), "split_seed": self.split_seed_for(common)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The spec as its YAML reads (`set`, not `overrides`)."""
        return self.model_dump(mode="json", by_alias=True)


def cell_identity(config: Config) -> dict[str, Any]:
    """What makes two cells the same experiment: the resolved config without its name (a label,
    `<study>-<variant>-seed<N>`) and the paths that differ between machines or studies."""
    data = config.to_dict()
    data.pop("name", None)
    data["data"].pop("root", None)
    data["data"].pop("split_file", None)
    return data


def _check_variant_options(config: Config, overrides: list[str], source: str) -> None:
    """A registered model variant's fixed options must survive: a base with `model.skip: concat` would silently
    undo `model.name=unet-add` (the study's variant itself may still override them)."""
    fixed = variant_of(config.model.name)
    if fixed is None:
        return
    options = config.model.options()
    own = {text.split("=", 1)[0].strip() for text in overrides}
    for key, value in fixed[1].items():
        if f"model.{key}" in own or "model" in own:
            continue
        if json.dumps(options.get(key), default=list) != json.dumps(value, default=list):
            raise ConfigError(f"{source}: model.name={config.model.name} means {key}={value!r}, but the base or "
                              f"`set` gives model.{key}={options.get(key)!r}; set model.{key} in the variant instead")


def _pick(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None  # type: ignore[assignment]
    return data


def _check_split_keys(config: Config, common: Config, source: str) -> None:
    cell, shared = config.to_dict(), common.to_dict()
    for key in SPLIT_KEYS:
        if _pick(cell, key) != _pick(shared, key):
            raise ConfigError(f"{source}: bad value for '{key}': every cell uses the study's one split, so a "
                              f"variant may not change {key}; put it in the study's `set` for every cell")


# ----------------------------------------------------------------------------- finding and reading studies


study_names = STUDIES.names
study_description = STUDIES.description


def _format_error(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(field.alias or name for name, field in StudySpec.model_fields.items())
        return f"{source}: unknown study key '{key}'; study keys are {allowed}"
    if first["type"] == "missing":
        return f"{source}: missing study key '{key}'"
    return f"{source}: bad value for '{key}': {first['msg'].removeprefix('Value error, ')}"


def parse_study(data: Any, source: str = "study", source_dir: Path | None = None) -> StudySpec:
    """A StudySpec from a mapping; ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study is a mapping (name, base, seeds, budget, variants, ...)")
    data = {key: value for key, value in data.items() if key != "fingerprint"}  # a study folder's study.yaml
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None
    except UnetlabError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    spec._source_dir = source_dir
    return spec


def load_study(name_or_path: str | Path) -> StudySpec:
    """A study file, or a built-in study by name (`load_study("q52-skips")`); an existing path wins."""
    if isinstance(name_or_path, StudySpec):
        return name_or_path
    text, source, source_dir = STUDIES.read(name_or_path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_study(data, source, source_dir)
