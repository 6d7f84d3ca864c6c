"""The typed config tree: every option a run uses, with its default, validated in one place.

A config is loaded from YAML (or built from defaults), then `--set a.b=value` overrides are
applied; unknown keys and bad values are refused with a message naming the key. The resolved
config is written to the run folder and stored inside checkpoints, so a run can be re-created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from unetlab.data.io import DEFAULT_MAX_PIXELS
from unetlab.errors import ConfigError
from unetlab.recipes import read_config_source


class _Section(BaseModel):
    # Numbers typed on the command line for text keys (--set name=2024) stay text; NaN and infinities
    # (YAML .nan / .inf) are refused: no option means them, and a bound like gt=0 lets inf through.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True,
                              allow_inf_nan=False)


class DataConfig(_Section):
    format: str = Field("tgs", description="a reader of unetlab.data.formats.registry.FORMATS")
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "the reader's options, e.g. {foreground: 0}; tgs and folders: binary_rule (how mask values become "
        "salt/foreground: strict, the tgs default: only 0/1, 0/255 or 0/65535 masks, others refused; nonzero: "
        "value > 0; threshold:T: value > T) and allow_lossy_masks (false: JPEG masks refused)"))
    cache: bool = Field(True, description="decode files once into a memory-mapped cache beside the data")
    root: Optional[str] = Field(None, description="the data folder (the CLI's --data wins)")
    input_size: int = Field(128, ge=8, description="side of the square the model sees")
    sizing: Literal["pad", "resize", "native"] = Field(
        "pad", description="pad / resize to input_size, or native: keep the images' own size (all equal)")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of the images held out for validation, "
                                "stratified by salt coverage (binary) or dominant class (multiclass)")
    coverage_bins: int = Field(10, ge=1, description="salt-coverage classes for the stratified split")
    split_file: Optional[str] = Field(None, description="reuse an earlier run's split.json (or folds.json with folds)")
    folds: int = Field(0, ge=0, description="k of a stratified k-fold; 0 = one train/validation split")
    fold: int = Field(0, ge=0, description="which fold validates when folds >= 2")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="pixels (height x width) per image at most; "
                            "larger images (decompression bombs) are refused before decoding")


    @model_validator(mode="after")
    def _fold_in_range(self) -> "DataConfig":
        if self.folds == 1:
            raise ConfigError("bad value for 'data.folds': 0 (one split) or at least 2")
        if self.folds and self.fold >= self.folds:
            raise ConfigError(f"bad value for 'data.fold': fold {self.fold} does not exist with "
                              f"data.folds={self.folds}; use 0..{self.folds - 1}")
        return self

    @model_validator(mode="after")
    def _known_format(self) -> "DataConfig":
        from unetlab.data.formats.registry import resolve_format

        resolve_format(self.format, self.options, field="data.format", option_prefix="data.options.",
                       error=ConfigError)
        return self


class ModelConfig(_Section):
    """`name` picks a registered model; every other key is an option of that model's factory.

    Options are checked against the factory's signature (unknown keys, types), filled with the
    factory's defaults so that config.yaml shows the whole model, and checked for value ranges by
    building the model on the meta device (no memory, no weight downloads).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, coerce_numbers_to_str=True)
    name: str = Field("unet", description="a registered model or named variant (`unetlab models` lists them)")
    in_channels: int = Field(1, ge=1, description="input channels: 1 grey, 3 RGB")
    classes: int = Field(1, ge=1, description="1 for binary (one sigmoid), the class count for multiclass")

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        # Checkpoints of unetlab 0.1 stored `batch_norm: bool`; it became `norm`.
        if isinstance(data, dict) and "batch_norm" in data and "norm" not in data:
            data = dict(data)
            data["norm"] = "batch" if data.pop("batch_norm") else "none"
        return data

    @model_validator(mode="after")
    def _check_options(self) -> "ModelConfig":
        from unetlab.models.registry import validate_options

        options = validate_options(self.name, self.options())
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        extra.update({k: v for k, v in options.items() if k not in ("in_channels", "classes")})
        self.__pydantic_extra__ = extra
        return self

    def options(self) -> dict[str, Any]:
        """Keyword arguments for `create_model(self.name, **options)`."""
        return {"in_channels": self.in_channels, "classes": self.classes, **(self.model_extra or {})}


class LossTerm(_Section):
    """One term of a composite loss: `weight` * loss `name`, counted while training progress is in [start, stop)."""

    name: str = Field(description="a registered loss term (unetlab.losses.list_losses())")
    weight: float = Field(1.0, ge=0.0, description="the term's weight in the sum")
    start: float = Field(0.0, ge=0.0, le=1.0, description="share of training (0..1) after which the term joins")
    stop: Optional[float] = Field(None, gt=0.0, le=1.0, description="share of training after which the term no "
                                  "longer counts (e.g. BCE first, then Lovász alone); null: until the end")

    def active(self, progress: float) -> bool:
        return progress >= self.start and (self.stop is None or progress < self.stop)

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from unetlab.losses import list_losses

        if name not in list_losses():
            raise PydanticCustomError("unknown_loss_term", "unknown loss term {name}; choose one of {names}",
                                      {"name": repr(name), "names": ", ".join(list_losses())})
        return name

    @model_validator(mode="after")
    def _stop_after_start(self) -> "LossTerm":
        if self.stop is not None and self.stop <= self.start:
            raise ConfigError(f"bad value for 'loss.terms': the {self.name} term stops at {self.stop:g}, not after "
                              f"it starts ({self.start:g}); make stop larger than start or leave it unset")
        return self


class LossConfig(_Section):
    """The training loss: a preset `name`, or an explicit list of `terms` (then `name` must be left unset).

    Presets (unetlab.losses.PRESETS): bce, dice, bce_dice, lovasz, bce_lovasz (binary; dice and
    lovasz work for both tasks), ce, ce_dice, ce_lovasz (multiclass), focal, tversky (both).
    Term names come from the loss registry (`unetlab.losses.list_losses()`); which term fits which
    task is checked by `unetlab.losses.check_loss_config`.
    """

    name: Optional[str] = Field(
        None, description="a preset; unset (null) = the task's default: bce for binary, ce for multiclass")
    terms: Optional[list[LossTerm]] = Field(
        None, description="replaces the preset, e.g. [{name: ce}, {name: dice, weight: 0.5}]; leave name unset")
    # Lovász from random initialisation stalls: in the *_lovasz presets it joins once this share of training is done.
    lovasz_start: float = Field(0.5, ge=0.0, le=1.0, description="*_lovasz presets: share of training after "
                                "which the Lovász hinge joins")
    pos_weight: Optional[float] = Field(None, gt=0.0, description="binary BCE: weight of the positive pixels")
    dice_mode: Literal["batch", "image"] = Field(
        "batch", description="soft Dice / Tversky over the whole batch, or per image then averaged")
    focal_gamma: float = Field(2.0, ge=0.0, description="focal loss: how much easy pixels are down-weighted "
                               "(0 = cross-entropy)")
    focal_alpha: Optional[float] = Field(
        None, ge=0.0, le=1.0, description="binary focal: weight of positives (negatives 1 - alpha); "
                                          "multiclass: refused, use class_weights")
    tversky_alpha: float = Field(0.3, ge=0.0, description="Tversky weight of false positives")
    tversky_beta: float = Field(0.7, ge=0.0, description="Tversky weight of false negatives")
    class_weights: Optional[Literal["inverse", "median"] | list[float]] = Field(
        None, description="bce/ce/focal per-class weights: inverse | median (from the training masks) | "
                          "one float per class (binary: [background, foreground])")
    smooth: float = Field(1.0, gt=0.0, description="Dice/Tversky smoothing: keeps empty masks finite")

    @field_validator("name")
    @classmethod
    def _known_preset(cls, name: Optional[str]) -> Optional[str]:
        from unetlab.losses import list_presets

        if name is not None and name not in list_presets():
            raise PydanticCustomError("unknown_loss_preset", "unknown loss preset {name}; choose one of {names}, "
                                      "or give loss.terms", {"name": repr(name), "names": ", ".join(list_presets())})
        return name

    @model_validator(mode="before")
    @classmethod
    def _class_weights_and_terms(cls, data: Any) -> Any:
        weights = data.get("class_weights") if isinstance(data, dict) else None
        if weights is not None and weights not in ("inverse", "median") and not (
                isinstance(weights, list) and weights
                and all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < float("inf")
                        for w in weights) and any(w > 0 for w in weights)):
            raise ConfigError(f"bad value for 'loss.class_weights': {weights!r}; use inverse, median or one "
                              "finite weight >= 0 per class (at least one > 0), e.g. [1.0, 2.5]")
        # `terms` replaces the preset: refuse both given, and record name as unset (null) with terms.
        if isinstance(data, dict) and data.get("terms") is not None:
            if data.get("name") is not None:
                raise ConfigError(f"bad value for 'loss.name': {data['name']!r} given together with loss.terms; "
                                  "remove loss.name (or set it to null) to use the terms, or remove loss.terms")
            data = {**data, "name": None}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "LossConfig":
        if self.terms is not None:
            if not any(t.weight > 0 and t.start == 0 for t in self.terms):
                raise ConfigError("bad value for 'loss.terms': no term with weight > 0 starts at 0, so nothing "
                                  "would be trained at first; give at least one such term")
            # A gap can only open where a term stops: some weighted term must be active there.
            for at in sorted({t.stop for t in self.terms if t.stop is not None}):
                if at < 1.0 and not any(t.weight > 0 and t.active(at) for t in self.terms):
                    raise ConfigError(f"bad value for 'loss.terms': from progress {at:g} no term with weight > 0 "
                                      "is active, so nothing would be trained; let another term start by then")
        if self.pos_weight is not None and self.class_weights is not None:
            raise ConfigError("bad value for 'loss.pos_weight': both loss.pos_weight and loss.class_weights "
                              "weight the positives; set only one")
        if self.tversky_alpha == 0 and self.tversky_beta == 0:
            raise ConfigError("bad value for 'loss.tversky_alpha': tversky_alpha and tversky_beta are both 0 "
                              "(the loss would be constant); make at least one > 0")
        return self


class OptimConfig(_Section):
    name: Literal["adam", "adamw", "sgd", "rmsprop"] = Field("adam", description="the optimiser")
    lr: float = Field(1e-3, gt=0.0, description="learning rate (the peak of onecycle and cosine schedules)")
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled for adamw, L2 for the others")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd and rmsprop")
    nesterov: bool = Field(True, description="sgd: Nesterov momentum")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam and adamw")
    grad_clip_norm: Optional[float] = Field(None, gt=0.0, description="clip the global gradient norm to this")


class ScheduleConfig(_Section):
    name: Literal["plateau", "cosine", "onecycle", "step", "constant", "cosine_restarts"] = Field(
        "plateau", description="the learning-rate schedule: plateau (drop when the monitor stalls), cosine, "
                               "onecycle (rise then cosine), step (milestones), constant, cosine_restarts "
                               "(schedule.cycles cosines, a snapshot checkpoint at the end of each)")
    factor: float = Field(0.1, gt=0.0, lt=1.0, description="plateau and step: multiply the lr by this")
    milestones: list[float] = Field([0.5, 0.75], description="step: shares of training (0..1) where the lr drops")

    @model_validator(mode="after")
    def _milestones_in_range(self) -> "ScheduleConfig":
        if any(not 0.0 < m < 1.0 for m in self.milestones):
            raise ConfigError(f"bad value for 'schedule.milestones': {self.milestones}; shares of training "
                              "strictly between 0 and 1, e.g. [0.5, 0.75]")
        return self
    patience: int = Field(5, ge=0, description="plateau: epochs without improvement before the rate drops")
    min_lr: float = Field(1e-6, ge=0.0, description="the floor of plateau, cosine, onecycle and cosine_restarts")
    warmup_epochs: float = Field(0.0, ge=0.0, description="cosine: epochs of linear warm-up (onecycle: 30 % "
                                 "of training when 0; cosine_restarts: at the start of the first cycle only)")
    cycles: int = Field(1, ge=1, description="cosine_restarts: equal cycles over training, each a cosine from "
                        "optim.lr to min_lr; with 2 or more, checkpoints/snapshot-1.pt, snapshot-2.pt, ... are saved "
                        "at the end of each (a snapshot ensemble, docs/inference.md); 1 = cosine")

    @model_validator(mode="after")
    def _cycles_need_restarts(self) -> "ScheduleConfig":
        # Refused rather than ignored: someone asking for cycles expects the restarts and their snapshots.
        if self.cycles > 1 and self.name != "cosine_restarts":
            raise ConfigError(f"bad value for 'schedule.cycles': {self.cycles} cycles need "
                              f"schedule.name=cosine_restarts (it is {self.name}); set it, or schedule.cycles=1")
        return self


class AugmentConfig(_Section):
    """A kornia preset (`unetlab augment-preview` shows one) with any of its common fields overridden.

    Every field left unset (null) keeps the preset's value: `preset: seismic` alone is horizontal
    flips, ±10 % shift and zoom, brightness/contrast ±0.1 and a little Gaussian noise.
    """

    preset: Literal["seismic", "photographic", "none"] = Field(
        "seismic", description="seismic (grey), photographic (RGB: the full set), none")
    hflip: Optional[bool] = Field(None, description="horizontal flips (probability 0.5)")
    vflip: Optional[bool] = Field(None, description="vertical flips; seismic depth has a direction")
    shift: Optional[float] = Field(None, ge=0.0, le=0.5, description="max translation as a share of the side")
    scale: Optional[float] = Field(None, ge=0.0, le=0.5, description="max relative zoom in or out")
    brightness: Optional[float] = Field(None, ge=0.0, le=1.0, description="additive offset in [-b, b]")
    contrast: Optional[float] = Field(None, ge=0.0, lt=1.0, description="multiplicative gain in [1 - c, 1 + c]")
    noise: Optional[float] = Field(None, ge=0.0, le=1.0, description="std of added Gaussian noise (0 = off)")
    crop: Optional[int] = Field(None, ge=8, description="train on random crops of this side (large images); "
                                                        "validation and prediction see whole images")

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        # unetlab 0.2's `builtin` engine took exactly its fields; the same fields on preset none do the same.
        if isinstance(data, dict) and data.get("preset") == "builtin":
            data = {**data, "preset": "none"}
        return data

class TrainConfig(_Section):
    epochs: int = Field(100, ge=1, description="the most epochs (a time budget or early stopping may end sooner)")
    batch_size: int = Field(32, ge=1, description="images per optimiser step (all processes together)")
    early_stop_patience: int = Field(10, ge=0, description="0 turns early stopping off")
    monitor: str = Field("val/loss", description="the validation value that picks best.pt and drives early "
                         "stopping and plateau (e.g. val/tgs_map, val/miou)")
    monitor_mode: Literal["min", "max"] = Field("min", description="whether lower or higher monitor values are better")
    max_minutes: Optional[float] = Field(None, gt=0.0, description="stop after this wall-clock budget")
    precision: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="autocast dtype; fp16 (CUDA only) adds a gradient scaler")
    channels_last: bool = Field(True, description="channels-last memory layout (faster convolutions on CPU and GPU)")
    device: str = Field("auto", description="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    num_threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    freeze_encoder_epochs: int = Field(0, ge=0, description="keep a pretrained encoder frozen this many epochs")
    deterministic: bool = Field(False, description="deterministic algorithms: same seed, same weights (slower)")
    compile: bool = Field(False, description="torch.compile the model (pays off on long GPU runs)")
    log_every_steps: int = Field(10, ge=0, description="TensorBoard step scalars every N steps; 0 = per epoch only")
    image_every_epochs: int = Field(5, ge=0, description="TensorBoard validation images every N epochs; 0 = never")
    averaging: Literal["none", "ema", "swa"] = Field(
        "none", description="validate and save averaged weights: exponential moving average or SWA")
    ema_decay: float = Field(0.995, gt=0.0, lt=1.0, description="EMA: weight of the running average per step")
    swa_start: float = Field(0.75, ge=0.0, lt=1.0, description="share of training after which SWA averages")

    @field_validator("device")
    @classmethod
    def _device_spelled(cls, name: str) -> str:
        # Only the spelling: whether this machine has the device is asked when training starts, so a
        # config written on a GPU machine still loads on a CPU-only one (predict, evaluate).
        from unetlab.engine.device import check_device_name

        try:
            return check_device_name(name)
        except ValueError as exc:
            raise PydanticCustomError("bad_device", "{reason}", {"reason": str(exc)}) from None


class EvalConfig(_Section):
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="binary: salt where probability > threshold "
                             "(a saved operating point overrides it)")
    tta: Literal["none", "hflip", "dihedral"] = Field(
        "none", description="test-time augmentation: hflip averages the image and its mirror; dihedral the 8 "
                            "flips and quarter turns (photographs; seismic sections have a depth direction)")
    tile: int = Field(1024, ge=0, description="predict images with a side larger than this in overlapping tiles "
                                              "of this side, in bounded memory (docs/inference.md); 0 = never tile; "
                                              "data.sizing=resize runs never tile")
    tile_overlap: int = Field(64, ge=0, description="pixels that neighbouring tiles share at least (less than "
                                                    "eval.tile); the tiles spread evenly, so often more")
    tile_window: Literal["gaussian", "cosine"] = Field(
        "gaussian", description="how overlapping tiles blend: weights high in a tile's centre, low at its border")

    @model_validator(mode="after")
    def _tiles_fit(self) -> "EvalConfig":
        if 0 < self.tile < 16:
            raise ConfigError(f"bad value for 'eval.tile': {self.tile}; use 0 (never tile) or a side of at least 16")
        if self.tile and self.tile_overlap >= self.tile:
            raise ConfigError(f"bad value for 'eval.tile_overlap': {self.tile_overlap} pixels, not less than "
                              f"eval.tile {self.tile}; use a smaller overlap (e.g. {self.tile // 8})")
        return self

    min_area: int = Field(0, ge=0, description="binary: an image predicting fewer foreground pixels than this (at "
                          "its own size) is predicted empty; 0 keeps every prediction")
    min_component: int = Field(0, ge=0, description="binary: connected components (8-connected) of fewer predicted "
                               "pixels than this are removed, before min_area counts; 0 keeps every component")


class TuneConfig(_Section):
    """`unetlab tune CONFIG`: an Optuna search over this config (docs/tuning.md); `unetlab train` ignores it.

    `space` maps a config key to a distribution, one of
        {float: [low, high]} (optional log: true, or step: 0.05), {int: [low, high]} (optional step: 8,
        or log: true), {choice: [a, b, c]} (numbers, text, true/false, null).
    Keys are dotted (`optim.lr`, `loss.terms.1.weight`); nested mappings are read as dotted keys. Each
    bound and each choice is checked against the rest of the config at load, errors naming tune.space.KEY.
    """

    metric: Optional[str] = Field(None, description="the metrics.csv column to optimise; null: train.monitor")
    direction: Optional[Literal["maximize", "minimize"]] = Field(
        None, description="null: from train.monitor_mode (then metric must be train.monitor)")
    trials: int = Field(20, ge=1, description="finished (complete or pruned) trials of the study, all workers together")
    sampler: Literal["tpe", "random"] = Field("tpe", description="TPE (seeded with seed + trial number) or random")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="stop unpromising trials early from the metric of each epoch")
    startup_trials: int = Field(5, ge=0, description="random trials before TPE models the space; the median "
                                                     "pruner prunes only after this many trials")
    warmup_epochs: int = Field(1, ge=0, description="median pruner: epochs a trial runs before it can be pruned")
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="config key -> distribution, e.g. optim.lr: {float: [1.0e-4, 1.0e-2], "
                                          "log: true}; train.batch_size: {choice: [16, 32]}")

    @field_validator("space", mode="before")
    @classmethod
    def _dotted_keys(cls, space: Any) -> Any:
        # {optim: {lr: {float: ...}}} (what `--set tune.space.optim.lr=...` builds) reads as {optim.lr: ...}.
        if not isinstance(space, dict):
            return space
        flat: dict[str, Any] = {}
        for key, spec in space.items():
            if isinstance(spec, dict) and spec and not {"float", "int", "choice"} & set(spec):
                flat.update({f"{key}.{sub}": inner for sub, inner in cls._dotted_keys(spec).items()})
            else:
                flat[str(key)] = spec
        return flat

    @field_validator("space")
    @classmethod
    def _distributions(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key, spec in space.items():
            if "float" in spec:  # PyYAML reads 1e-4 (no dot) as text
                space[key] = spec = {name: [cls._yaml_float(v) for v in value] if isinstance(value, list)
                                     else cls._yaml_float(value) for name, value in spec.items()}
            problem = cls._distribution_problem(spec)
            if problem:
                raise ConfigError(f"bad value for 'tune.space.{key}': {problem}; use {{float: [low, high]}} "
                                  "(log: true | step: S), {int: [low, high]} (step: N | log: true) or {choice: [a, b]}")
        return space

    @staticmethod
    def _yaml_float(value: Any) -> Any:
        try:
            return float(value) if isinstance(value, str) else value
        except ValueError:
            return value

    @staticmethod
    def _distribution_problem(spec: dict[str, Any]) -> str | None:
        kinds = [kind for kind in ("float", "int", "choice") if kind in spec]
        if len(kinds) != 1:
            return f"{spec!r} names {len(kinds)} of float / int / choice, not one"
        kind, values = kinds[0], spec[kinds[0]]
        extra = set(spec) - {kind} - ({"log", "step"} if kind != "choice" else set())
        if extra:
            return f"{kind} takes no {', '.join(sorted(extra))}"
        if kind == "choice":
            scalar = (str, int, float, bool, type(None))
            if not isinstance(values, list) or not values or not all(isinstance(v, scalar) for v in values):
                return "choice needs a list of numbers, texts, true/false or null"
            return "choice lists a value twice" if len(set(map(repr, values))) < len(values) else None
        number = int if kind == "int" else (int, float)
        if not (isinstance(values, list) and len(values) == 2 and all(
                isinstance(v, number) and not isinstance(v, bool) for v in values)) or values[0] >= values[1]:
            return f"{kind} needs [low, high] with low < high ({'integers' if kind == 'int' else 'numbers'})"
        log, step = spec.get("log", False), spec.get("step")
        if not isinstance(log, bool) or (step is not None and (not isinstance(step, number) or step <= 0)):
            return "log must be true or false and step a number > 0"
        if log and values[0] <= 0:
            return "log needs low > 0"
        if log and step is not None and (kind == "float" or step != 1):
            return "log and step do not combine"
        return None

    def bounds(self, key: str) -> list[Any]:
        """The values of `space[key]` that are checked at load: both bounds, or every choice."""
        spec = self.space[key]
        return list(spec["choice"] if "choice" in spec else spec.get("float", spec.get("int")))

    def objective(self, train: TrainConfig) -> tuple[str, str]:
        """(metric, direction) of the search: train.monitor and its mode unless set here."""
        metric = self.metric or train.monitor
        return metric, self.direction or ("maximize" if train.monitor_mode == "max" else "minimize")

    def apply(self, config: "Config", params: dict[str, Any], source: str = "tune") -> "Config":
        """`config` with `params` (config key -> value) set and without its tune section: a plain run's config."""
        data = {key: value for key, value in config.to_dict().items() if key != "tune"}
        for key, value in params.items():
            self._set_key(data, key.split("."), value, source)
        try:
            return Config.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, source)) from None
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @staticmethod
    def _set_key(data: dict[str, Any], parts: list[str], value: Any, source: str) -> None:
        """data[a][b][c] = value for parts [a, b, c]; a digit indexes a list (`loss.terms.1.weight`)."""
        node: Any = data
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth]) or "the config"
            index: Any = part
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{source}: '{part}' is no item of {where} ({len(node)} items)")
                index = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"{source}: '{where}' is a value, not a section")
            elif node.get(part) is None and depth < len(parts) - 1:  # unset: let the schema name the key
                node[part] = [] if parts[depth + 1].isdigit() else {}
            if depth == len(parts) - 1:
                node[index] = value
            else:
                node = node[index]

    def check(self, config: "Config") -> None:
        """Refuse a space that names no config key or reaches values the config refuses (at load)."""
        if self.metric and self.metric != config.train.monitor and self.direction is None:
            raise ConfigError(f"bad value for 'tune.direction': tune.metric {self.metric} is not train.monitor, "
                              "so its direction is unknown; set tune.direction: maximize or minimize")
        for key in self.space:
            for value in self.bounds(key):
                self.apply(config, {key: value}, source=f"tune.space.{key}={value!r}")


class Config(_Section):
    name: str = Field("run", description="names the run folder runs/<name>-<time>")
    seed: int = Field(42, description="initialisation, augmentation and the validation split")
    task: Literal["binary", "multiclass"] = Field(
        "binary", description="binary: one logit per pixel (sigmoid); multiclass: model.classes logits (softmax)")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        # Keys that unetlab 0.1 checkpoints may carry and that no longer exist (they never had an effect).
        if isinstance(data, dict) and isinstance(data.get("train"), dict) and "figure_every" in data["train"]:
            data = {**data, "train": {k: v for k, v in data["train"].items() if k != "figure_every"}}
        return data

    @model_validator(mode="after")
    def _task_consistent(self) -> "Config":
        from unetlab.losses import check_loss_config

        check_loss_config(self.loss, self.task, self.model.classes)
        if self.augment.preset == "photographic" and self.model.in_channels != 3:
            raise ConfigError("bad value for 'augment.preset': 'photographic' jitters colour and needs RGB input "
                              "(model.in_channels=3); use 'seismic' for grey images")
        if self.task == "multiclass" and self.eval.min_area:
            raise ConfigError("bad value for 'eval.min_area': it empties small binary predictions; multiclass "
                              "runs take the argmax, set it to 0")
        if self.task == "multiclass" and self.eval.min_component:
            raise ConfigError("bad value for 'eval.min_component': it removes small binary components; multiclass "
                              "runs take the argmax, set it to 0")
        return self

    @model_validator(mode="after")
    def _tune_space_fits(self) -> "Config":
        self.tune.check(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _format_validation_error(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown config key '{key}'; check the spelling (`unetlab configs` lists complete recipes)"
    return f"{source}: bad value for '{key}': {first['msg']}"


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.epochs=5")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: empty key")
    # YAML parsing turns '5' into 5, 'true' into True, 'null' into None, '[1,2]' into a list.
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides to a nested dict (in place) and return it."""
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    except ConfigError as exc:  # from the model registry's option check
        raise ConfigError(f"{source}: {exc}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's complaint with the line and column where it happened (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return problem if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path` or the built-in recipe of that name (`load_config("tgs-salt")`,
    see `unetlab.recipes`), then `overrides` (`a.b=value`)."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        text, source = read_config_source(path)
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML ({_yaml_problem(exc)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        data = loaded
    if overrides:
        apply_overrides(data, overrides)
        source = f"{source} with --set"
    return config_from_dict(data, source)
