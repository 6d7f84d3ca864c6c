"""Benchmarks behind `unetlab bench train`, `unetlab bench models` and `unetlab bench predict`.

`bench train`: training images/s and peak memory of three paths that share the model
architecture (same initial weights), the loss and the optimizer of the config, measured in one run
and alternating in rounds so that machine noise hits all alike; the median of the rounds is
reported, and the ratios of the two default paths to the naive one are the figures that matter.

1. ``default, synthetic tensors``: the trainer's `train_step` with the configured precision and
   memory format (bf16 autocast + channels_last by default) on one batch already in memory, as
   nnU-Net's benchmark trainers do: the ceiling of the model itself.
2. ``default, full pipeline``: the trainer's real per-step path on a data set held on the device
   (``--data DIR`` in any format the config reads, else a synthetic TGS-like set generated in
   memory): random batch indices, the trainer's `prepare_batch` (random crop, augmentation,
   normalisation, memory format), `train_step` (gradient clipping, weight averaging and a
   per-step schedule as configured).
3. ``fp32 NCHW eager (naive)``: what a first PyTorch segmentation script does: a
   `torch.utils.data.Dataset` returning one float32 image/mask pair per index with a random
   numpy flip, a `DataLoader(batch_size, shuffle=True, num_workers=0)`, fp32 NCHW weights and
   activations, no autocast, `loss.item()` every step. Same data as path 2.

Every path runs its loss at training progress 0 (terms that join later, such as the Lovász part
of ``bce_lovasz``, are not timed), and the schedule is stepped at progress 0 too.

Peak memory (`peak_memory_mb`) is what a path's training steps add on top of what exists before
its first step: activations, gradients, optimizer state, batches and allocator slack, not the
model's weights, the data set or the Python and torch libraries. On CUDA it is
`torch.cuda.max_memory_allocated` over the path's warm-up steps (statistics reset before them)
minus `torch.cuda.memory_allocated` just before them: tensors only, no allocator cache or CUDA
context. On the CPU each path runs alone in a fresh Python process (`python -c`, so nothing of
the other paths or of this process is counted; the three probes run side by side after the timed
rounds, never during them): a few steps, and the number is the process's
peak resident memory during them minus its resident memory just before the first one. On Linux
the peak is the kernel's high-water mark VmHWM, reset through /proc/self/clear_refs just before
the first step (getrusage's ru_maxrss is the same high-water mark, but a child started with
vfork inherits its parent's peak in it); elsewhere the rise of ru_maxrss, a lower bound.

`bench models`: every model of the zoo at given sizes: parameters, GFLOPs, receptive field,
inference and training images/s on the default path (bf16 autocast + channels_last).

`bench predict`: a square grey seismic section of each given side through `Predictor.predict_proba`
(tiled prediction, inference/tiling.py) with a trained run or the config's model with random weights:
seconds, and the peak resident memory of a fresh Python process that predicts that one size alone
(VmHWM reset just before the section is made, as above), compared with the section (uint8) and
probability (float32) arrays themselves; memory flat per pixel shows as bytes per pixel that do not
grow with the side.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn as nn

from unetlab.config import Config
from unetlab.engine.step import build_optimizer, prepare_batch, seed_everything, train_step, training_loss
from unetlab.errors import ConfigError, UnetlabError
from unetlab.files import atomic_write_text
from unetlab.engine.device import autocast, resolve_device
from unetlab.losses import LossFn, build_loss, loss_terms
from unetlab.models import create_model

if TYPE_CHECKING:
    from unetlab.data.sizing import Sizing

SYNTHETIC = "default, synthetic tensors"
PIPELINE = "default, full pipeline"
NAIVE = "fp32 NCHW eager (naive)"
PATH_NAMES = (SYNTHETIC, PIPELINE, NAIVE)
SYNTHETIC_IMAGES = 256  # size of the in-memory synthetic data set when no --data is given
MEMORY_STEPS = 3  # steps of each CPU memory probe: Adam's state appears at the first, the peak by the second


@dataclass
class BenchData:
    """What the full pipeline and the naive loop train on: decoded uint8 images as read
    ((N, H, W) grey or (N, H, W, C)), bool masks (N, H, W), an optional bool valid map, and the
    per-channel mean and std (in [0, 1] units) that normalise them."""

    images: np.ndarray
    masks: np.ndarray
    valid: np.ndarray | None
    mean: list[float]
    std: list[float]
    source: str

    def __len__(self) -> int:
        return len(self.images)


def bench_data(cfg: Config, data: str | Path | None = None, images: int = SYNTHETIC_IMAGES,
               size: int | None = None) -> BenchData:
    """`data` read as the config says (`load_for_config`), or `images` synthetic TGS-like seismic
    images (`unetlab.data.synthetic`, seed `cfg.seed`) of 101x101, or of `size` when smaller."""
    from unetlab.data.tensors import channel_stats

    channels = cfg.model.in_channels
    if data is not None:
        from unetlab.data.formats.registry import load_for_config

        dataset = load_for_config(cfg, data)
        if dataset.channels != channels:
            raise ConfigError(f"model.in_channels is {channels} but the images of {data} have {dataset.channels} "
                              f"channel(s); use --set model.in_channels={dataset.channels}")
        pixels, masks, valid = dataset.images, dataset.masks, dataset.valid
        height, width = pixels.shape[1:3]
        source = f"{data} (format {cfg.data.format}, {len(pixels)} images {height}x{width})"
    else:
        from unetlab.data.synthetic import generate_seismic

        side = min(101, size or cfg.data.input_size)
        pixels, masks = generate_seismic(images, size=side, seed=cfg.seed)
        if channels > 1:
            pixels = np.repeat(pixels[..., None], channels, axis=-1)
        valid = None
        source = (f"synthetic TGS-like seismic (unetlab.data.synthetic), {images} images {side}x{side}, "
                  f"seed {cfg.seed}, in memory")
    mean, std = channel_stats(pixels)
    return BenchData(pixels, masks, valid, mean, std, source)


class NaiveDataset(torch.utils.data.Dataset):
    """The usual first segmentation Dataset: one float32 (C, H, W) image, normalised, and its float32
    (1, H, W) mask per index, flipped at random with numpy (horizontally; vertically too if the
    config's augmentation does)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, valid: np.ndarray | None, mean: list[float],
                 std: list[float], vflip: bool = False, seed: int = 0):
        self.images, self.masks, self.valid = images, masks, valid  # uint8 (N, C, H, W), (N, H, W), bool (N, H, W)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        self.vflip = vflip
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image = (self.images[index].astype(np.float32) / 255.0 - self.mean) / self.std
        arrays = [image, self.masks[index][None].astype(np.float32)]
        if self.valid is not None:
            arrays.append(self.valid[index][None])
        if self.rng.random() < 0.5:
            arrays = [a[..., ::-1] for a in arrays]
        if self.vflip and self.rng.random() < 0.5:
            arrays = [a[..., ::-1, :] for a in arrays]
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


@dataclass
class _Path:
    name: str
    precision: str
    channels_last: bool
    model: nn.Module
    step: Callable[[], Any]  # one training step; returns the loss (a tensor, or a float for the naive loop)
    observed: dict[str, Any] = field(default_factory=dict)


def _memory_format_name(t: torch.Tensor) -> str:
    last, plain = t.is_contiguous(memory_format=torch.channels_last), t.is_contiguous()
    if last and plain:
        return "either"  # one channel or 1x1 spatial: both layouts are the same strides
    return "channels_last" if last else "NCHW" if plain else "strided"


def _autocast_on(device: torch.device) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device.type))
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() if device.type == "cuda" else torch.is_autocast_cpu_enabled()


def _observe(model: nn.Module) -> dict[str, Any]:
    """What the path really runs, filled in during its first forward pass by hooks on the convolutions:
    the dtype of the model input, of the first convolution's output (bfloat16 under bf16 autocast) and
    of the weights, whether autocast is on, and the memory format of weights and activations."""
    seen: dict[str, Any] = {}
    weights = {_memory_format_name(p) for p in model.parameters() if p.dim() == 4} - {"either"}
    seen["weights_dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    seen["weights_memory_format"] = weights.pop() if len(weights) == 1 else "mixed" if weights else "either"
    handles: list[Any] = []

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        x = inputs[0]
        if "input_dtype" not in seen:
            seen["input_dtype"] = str(x.dtype).replace("torch.", "")
            seen["compute_dtype"] = str(output.dtype).replace("torch.", "")
            seen["autocast"] = _autocast_on(x.device)
        if "activation_memory_format" not in seen and _memory_format_name(x) != "either":
            seen["activation_memory_format"] = _memory_format_name(x)
        if "activation_memory_format" in seen:
            for handle in handles:
                handle.remove()

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(hook))
    return seen


@dataclass
class _StepParts:
    """What a path's step builder works with: the ready model and optimizer, how they run, and the batches."""

    cfg: Config
    dev: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    precision: str
    fmt: torch.memory_format
    data: BenchData | None
    size: int
    batch_size: int

    @property
    def clip(self) -> float | None:
        return self.cfg.optim.grad_clip_norm

    def sizing(self) -> Sizing:
        from unetlab.data.sizing import Sizing

        return Sizing(self.cfg.data.sizing, self.size)

    def mean_std(self) -> tuple[list[float], list[float]]:
        assert self.data is not None
        if getattr(self.model, "input_mean", None) is not None:  # pretrained encoders bring their own statistics
            return list(self.model.input_mean), list(self.model.input_std)  # type: ignore[arg-type]
        return self.data.mean, self.data.std


def _synthetic_step(p: _StepParts) -> Callable[[], torch.Tensor]:
    """`train_step` on one fixed batch already on the device: the ceiling of the model itself."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(p.batch_size, p.cfg.model.in_channels, p.size, p.size, generator=generator)
    x = x.to(p.dev).contiguous(memory_format=p.fmt)
    y = (torch.rand(p.batch_size, 1, p.size, p.size, generator=generator) > 0.6).float().to(p.dev)
    return lambda: train_step(p.model, p.optimizer, p.loss_fn, x, y, p.precision, 0.0, None, p.clip)


def _pipeline_step(p: _StepParts) -> Callable[[], torch.Tensor]:
    """The trainer's per-step path: random batch indices, `prepare_batch`, `train_step`, averaging, schedule."""
    from unetlab.data.augment import build_batch_augment
    from unetlab.data.tensors import images_to_tensor, masks_to_tensor
    from unetlab.engine.averaging import build_averaging
    from unetlab.engine.schedule import build_scheduler

    cfg, data, dev, batch_size = p.cfg, p.data, p.dev, p.batch_size
    assert data is not None
    sizing, (mean, std) = p.sizing(), p.mean_std()
    # As the trainer holds its training split: on the device, already at the input size.
    train_x = sizing.images(images_to_tensor(data.images, dev))
    train_y = sizing.masks(masks_to_tensor(data.masks, dev)).to(torch.uint8)
    train_valid = None if data.valid is None else sizing.masks(masks_to_tensor(data.valid, dev)).to(torch.uint8)
    augment = build_batch_augment(cfg.augment)
    scheduler = build_scheduler(cfg, p.optimizer)
    averaging = build_averaging(cfg.train.averaging, p.model, cfg.train.ema_decay, cfg.train.swa_start)
    generator = torch.Generator().manual_seed(cfg.seed)
    state: dict[str, Any] = {"order": None, "at": len(train_x), "step": 0}

    def pipeline_step() -> torch.Tensor:
        if state["at"] + batch_size > len(train_x):  # a new epoch: a fresh permutation, last partial batch dropped
            state["order"], state["at"] = torch.randperm(len(train_x), generator=generator).to(dev), 0
        batch = state["order"][state["at"] : state["at"] + batch_size]
        state["at"] += batch_size
        images, masks, valid = prepare_batch(train_x[batch], train_y[batch].float(),
                                             None if train_valid is None else train_valid[batch], cfg.augment.crop,
                                             augment, generator, mean, std, p.fmt)
        loss = train_step(p.model, p.optimizer, p.loss_fn, images, masks, p.precision, 0.0, valid, p.clip)
        averaging.update_step(state["step"], 0.0)
        if scheduler.per_step:
            scheduler.step(0.0)
        state["step"] += 1
        return loss

    return pipeline_step


def _naive_loader(p: _StepParts) -> torch.utils.data.DataLoader:
    """A shuffling DataLoader over `NaiveDataset`, which reads numpy arrays already at the input size (uint8, as
    decoded files would be)."""
    from unetlab.data.tensors import images_to_tensor, masks_to_tensor

    cfg, data, sizing, (mean, std) = p.cfg, p.data, p.sizing(), p.mean_std()
    assert data is not None
    images = (sizing.images(images_to_tensor(data.images)) * 255.0).round().to(torch.uint8).numpy()
    masks = sizing.masks(masks_to_tensor(data.masks))[:, 0].to(torch.uint8).numpy()
    valid = None if data.valid is None else sizing.masks(masks_to_tensor(data.valid))[:, 0].numpy() > 0.5
    dataset = NaiveDataset(images, masks, valid, mean, std, vflip=cfg.augment.vflip, seed=cfg.seed)
    return torch.utils.data.DataLoader(dataset, batch_size=p.batch_size, shuffle=True, num_workers=0,
                                       drop_last=True, generator=torch.Generator().manual_seed(cfg.seed))


def _naive_step(p: _StepParts) -> Callable[[], float]:
    """A first PyTorch script's step: next DataLoader batch, fp32 forward and backward, `loss.item()`."""
    loader = _naive_loader(p)
    batches = iter(loader)

    def naive_step() -> float:
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        x, y = batch[0].to(p.dev), batch[1].to(p.dev)
        valid = batch[2].to(p.dev) if len(batch) > 2 else None
        loss = training_loss(p.model, p.loss_fn, p.model(x), y, 0.0, valid)
        p.optimizer.zero_grad()
        loss.backward()
        if p.clip is not None:
            torch.nn.utils.clip_grad_norm_(p.model.parameters(), p.clip)
        p.optimizer.step()
        return loss.item()

    return naive_step


# One step builder per path name; `_build_path` gives each the same seeded model and optimizer.
_STEP_BUILDERS: dict[str, Callable[[_StepParts], Callable[[], Any]]] = {
    SYNTHETIC: _synthetic_step,
    PIPELINE: _pipeline_step,
    NAIVE: _naive_step,
}


def _build_path(name: str, cfg: Config, dev: torch.device, data: BenchData | None, size: int, batch_size: int,
                loss_fn: LossFn) -> _Path:
    """A ready model and optimizer with the step function of one path. Every path's model starts from
    the same weights (seeded by cfg.seed)."""
    naive = name == NAIVE
    precision = "fp32" if naive else cfg.train.precision
    channels_last = not naive and cfg.train.channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    seed_everything(cfg.seed)
    model = create_model(cfg.model.name, **cfg.model.options()).to(dev).to(memory_format=fmt)
    model.train()
    optimizer = build_optimizer(cfg, model)
    observed = _observe(model)  # hooks in place before any step runs
    parts = _StepParts(cfg, dev, model, optimizer, loss_fn, precision, fmt, data, size, batch_size)
    return _Path(name, precision, channels_last, model, _STEP_BUILDERS[name](parts), observed)


# --------------------------------------------------------------------------- peak memory on the CPU


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _proc_status_kb("VmHWM") is not None
    except OSError:
        return False


def _ru_maxrss_mb() -> float:
    import resource

    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 2**20 if sys.platform == "darwin" else value / 1024  # bytes on macOS, KiB on Linux


def _memory_probe_main() -> None:
    """Entry point of a CPU memory probe (`python -c`): spec as JSON on stdin, result as JSON on the last line."""
    spec = json.loads(sys.stdin.read())
    torch.set_num_threads(int(spec["threads"]))
    cfg = Config.model_validate(spec["config"])
    data = None
    if spec["data"]:
        with np.load(spec["data"]) as arrays:
            data = BenchData(arrays["images"], arrays["masks"], arrays["valid"] if "valid" in arrays else None,
                             arrays["mean"].tolist(), arrays["std"].tolist(), "")
    path = _build_path(spec["path"], cfg, torch.device("cpu"), data, int(spec["size"]), int(spec["batch_size"]),
                       build_loss(cfg.loss))
    gc.collect()
    if _reset_peak_rss():
        before = _proc_status_kb("VmRSS") / 1024  # type: ignore[operator]
        for _ in range(int(spec["steps"])):
            float(path.step())
        peak, method = _proc_status_kb("VmHWM") / 1024, "VmHWM"  # type: ignore[operator]
    else:
        before = _ru_maxrss_mb()
        for _ in range(int(spec["steps"])):
            float(path.step())
        peak, method = _ru_maxrss_mb(), "ru_maxrss"
    print(json.dumps({"peak_memory_mb": peak - before, "memory_before_mb": before, "method": method}))


def _probe_env() -> dict[str, str]:
    """The environment of a probe process: this one's, with the folder holding this unetlab package first."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _cpu_memory_probes(names: tuple[str, ...], cfg: Config, data: BenchData, size: int, batch_size: int,
                       steps: int, log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Each path alone in a fresh Python process; see the module docstring for what the number means."""
    env = _probe_env()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="unetlab-bench-") as tmp:
        data_file = Path(tmp) / "data.npz"
        arrays = {"images": data.images, "masks": data.masks, "mean": np.asarray(data.mean),
                  "std": np.asarray(data.std)}
        if data.valid is not None:
            arrays["valid"] = data.valid
        np.savez(data_file, **arrays)
        # The probes run side by side (each measures only its own process), none of them while timing.
        probes = {}
        for name in names:
            spec = {"path": name, "config": cfg.to_dict(), "size": size, "batch_size": batch_size, "steps": steps,
                    "threads": torch.get_num_threads(), "data": None if name == SYNTHETIC else str(data_file)}
            probes[name] = (subprocess.Popen([sys.executable, "-c", "from unetlab.bench import _memory_probe_main; "
                                              "_memory_probe_main()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True, env=env), json.dumps(spec))
        for name, (process, spec_text) in probes.items():
            try:
                stdout, stderr = process.communicate(spec_text, timeout=900)
                results[name] = json.loads(stdout.strip().splitlines()[-1])
            except (IndexError, ValueError, subprocess.TimeoutExpired) as exc:
                if isinstance(exc, subprocess.TimeoutExpired):
                    process.kill()
                    stdout, stderr = process.communicate()
                tail = (stderr.strip().splitlines() or ["no output"])[-1]
                log(f"warning: the memory probe of '{name}' failed (exit code {process.returncode}): {tail}")
                results[name] = {"peak_memory_mb": None, "memory_before_mb": None, "method": None}
    return results


# --------------------------------------------------------------------------- bench train


def _memory_text(device: torch.device, memory_steps: int, warmup: int) -> str:
    if device.type == "cuda":
        return (f"torch.cuda.max_memory_allocated over the path's {warmup} warm-up step(s), reset before them, minus "
                "torch.cuda.memory_allocated just before them: activations, gradients, optimizer state and batches "
                "the steps add (tensors only; not the weights, the data set, the allocator cache or the CUDA context)")
    return (f"peak resident memory (RSS high-water mark) of a fresh Python process running {memory_steps} steps of the "
            "path alone, minus its RSS just before the first step: activations, gradients, optimizer state, batches "
            "and allocator slack the steps add (not the weights, the data set or the Python/torch libraries)")


def _check_input_size(cfg: Config, bench_set: BenchData, data: str | Path | None, size: int,
                      batch_size: int) -> None:
    """Refuse a data set smaller than one batch, or images that the config's sizing does not bring to size x size."""
    from unetlab.data.sizing import Sizing
    from unetlab.data.tensors import images_to_tensor

    if len(bench_set) < batch_size:
        raise ConfigError(f"{data or 'the synthetic data'}: {len(bench_set)} images, fewer than the batch size "
                          f"{batch_size}; use --batch-size {len(bench_set)} or a larger data set")
    sized = Sizing(cfg.data.sizing, size).images(images_to_tensor(bench_set.images[:1])).shape[-2:]
    if tuple(sized) != (size, size):
        fits = -(-max(sized) // 32) * 32  # the next multiple of 32 that the padded images fit
        raise ConfigError(f"{data}: images become {sized[0]}x{sized[1]} with data.sizing={cfg.data.sizing}, not the "
                          f"input size {size}x{size}; use --set data.sizing=resize or --size {fits}")


def _warm_up_paths(cfg: Config, dev: torch.device, bench_set: BenchData, size: int, batch_size: int,
                   loss_fn: LossFn, warmup: int) -> tuple[list[_Path], dict[str, tuple[float, float]]]:
    """Build every path and run its warm-up steps; on CUDA also the (peak, before) MB those steps add."""
    paths: list[_Path] = []
    cuda_memory: dict[str, tuple[float, float]] = {}
    for name in PATH_NAMES:
        path = _build_path(name, cfg, dev, None if name == SYNTHETIC else bench_set, size, batch_size, loss_fn)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            before = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(warmup):
            loss = path.step()
        float(loss)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            cuda_memory[name] = ((torch.cuda.max_memory_allocated(dev) - before) / 2**20, before / 2**20)
        paths.append(path)
    return paths, cuda_memory


def _timed_rounds(paths: list[_Path], dev: torch.device, rounds: int, steps: int,
                  batch_size: int) -> dict[str, list[float]]:
    """Images/s of every path in every round; the paths alternate so that machine noise hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in PATH_NAMES}
    for _ in range(rounds):
        for path in paths:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            for _ in range(steps):
                loss = path.step()
            float(loss)  # wait for the device
            samples[path.name].append(steps * batch_size / (time.perf_counter() - start))
    return samples


def _peak_memory(memory: bool, dev: torch.device, cuda_memory: dict[str, tuple[float, float]], cfg: Config,
                 bench_set: BenchData, size: int, batch_size: int, memory_steps: int, warmup: int,
                 log: Callable[[str], None]) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Per path ``peak_memory_mb`` and ``memory_before_mb`` (None when not measured), and what was measured."""
    if not memory:
        return {name: {"peak_memory_mb": None, "memory_before_mb": None} for name in PATH_NAMES}, None
    if dev.type == "cuda":  # measured during the warm-up steps
        return ({name: {"peak_memory_mb": peak, "memory_before_mb": before}
                 for name, (peak, before) in cuda_memory.items()}, _memory_text(dev, memory_steps, warmup))
    memory_info = _cpu_memory_probes(PATH_NAMES, cfg, bench_set, size, batch_size, memory_steps, log)
    method = _memory_text(dev, memory_steps, warmup)
    used = {info.get("method") for info in memory_info.values()} - {None}
    if used == {"ru_maxrss"}:
        method += "; measured as the rise of ru_maxrss (no /proc/self/clear_refs here): a lower bound"
    return memory_info, method


def _train_result(cfg: Config, dev: torch.device, bench_set: BenchData, size: int, batch_size: int, steps: int,
                  rounds: int, warmup: int, paths: list[_Path], samples: dict[str, list[float]],
                  memory_info: dict[str, dict[str, Any]], method: str | None) -> dict:
    """The result of `bench_train`, keys in the order `out` has always had them."""
    from unetlab.models.summary import count_parameters

    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {name: medians[name] / medians[NAIVE] for name in PATH_NAMES}
    channels = cfg.model.in_channels
    return {
        "date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}", "device": str(dev),
        "model": cfg.model.model_dump(), "input": f"{batch_size}x{channels}x{size}x{size}",
        "loss": "+".join(t.name for t in loss_terms(cfg.loss, cfg.task)), "steps_per_round": steps, "rounds": rounds,
        "images_per_s": medians, "samples": samples, "speedup": ratios[SYNTHETIC],
        "speedup_full_pipeline": ratios[PIPELINE],
        "ratio_to_naive": {SYNTHETIC: ratios[SYNTHETIC], PIPELINE: ratios[PIPELINE]},
        "peak_memory_mb": {name: memory_info[name]["peak_memory_mb"] for name in PATH_NAMES},
        "peak_memory_method": method,
        "optimizer": cfg.optim.name, "parameters": count_parameters(paths[0].model), "batch_size": batch_size,
        "size": size, "warmup_steps": warmup, "data": bench_set.source,
        "paths": {path.name: {"precision": path.precision,
                              "memory_format": "channels_last" if path.channels_last else "NCHW",
                              "memory_before_mb": memory_info[path.name]["memory_before_mb"],
                              "observed": path.observed} for path in paths},
    }


def bench_train(config: Config | None = None, size: int | None = None, batch_size: int | None = None,
                steps: int = 10, rounds: int = 3, warmup: int = 3, device: str | None = None,
                out: str | Path | None = None, log: Callable[[str], None] = print,
                data: str | Path | None = None, images: int = SYNTHETIC_IMAGES, memory: bool = True,
                memory_steps: int = MEMORY_STEPS) -> dict:
    """Images/s and peak memory of the three paths of the module docstring, in one run.

    `size` and `batch_size` default to the config's data.input_size and train.batch_size, `device`
    to train.device. `data` is a data folder in the config's format; without it the full pipeline
    and the naive loop train on `images` (at least one batch) synthetic TGS-like images made in memory. `memory=False`
    skips the peak-memory probes (the CPU ones cost a Python start per path). Warm-up steps
    (at least 1) precede the timed rounds. Returns the result that `out` receives as JSON:

    - ``images_per_s`` / ``samples``: path name -> median images/s / the images/s of every round;
    - ``speedup`` (synthetic tensors / naive, the figure of earlier versions), ``speedup_full_pipeline``
      (full pipeline / naive) and ``ratio_to_naive`` (both, by path name);
    - ``peak_memory_mb``: path name -> MB the path's steps add (None when not measured), and
      ``peak_memory_method``: what exactly was measured (see the module docstring);
    - ``paths``: path name -> precision, memory format, ``memory_before_mb`` (the baseline the peak is
      taken from) and ``observed`` (dtypes, autocast and memory formats seen by hooks in the first forward);
    - ``date``, ``machine``, ``device``, ``model``, ``input``, ``loss``, ``optimizer``, ``parameters``,
      ``batch_size``, ``size``, ``steps_per_round``, ``rounds``, ``warmup_steps``, ``data``.
    """
    cfg = config or Config()
    size = int(size or cfg.data.input_size)
    batch_size = int(batch_size or cfg.train.batch_size)
    warmup = max(int(warmup), 1)
    # One input size for every path, and the data read and padded or resized to it as the trainer would.
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"input_size": size})})
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    dev = resolve_device(device or cfg.train.device)
    bench_set = bench_data(cfg, data, images=images if data is not None else max(images, batch_size), size=size)
    _check_input_size(cfg, bench_set, data, size, batch_size)
    loss_fn = build_loss(cfg.loss)

    paths, cuda_memory = _warm_up_paths(cfg, dev, bench_set, size, batch_size, loss_fn, warmup)
    samples = _timed_rounds(paths, dev, rounds, steps, batch_size)
    # After the timed rounds: the CPU probes must never compete with the timing for the cores.
    memory_info, method = _peak_memory(memory, dev, cuda_memory, cfg, bench_set, size, batch_size, memory_steps,
                                       warmup, log)
    result = _train_result(cfg, dev, bench_set, size, batch_size, steps, rounds, warmup, paths, samples, memory_info,
                           method)
    _log_table(result, log)
    if out:
        atomic_write_text(out, json.dumps(result, indent=1))  # creates the parent folder too
    return result


def _log_table(result: dict, log: Callable[[str], None]) -> None:
    model = result["model"]
    options = ", ".join(f"{key} {model[key]}" for key in ("base_width", "depth") if key in model)
    log(f"training throughput: {model['name']}{f' ({options})' if options else ''}, "
        f"{result['parameters'] / 1e6:.2f} M parameters, input {result['input']}, loss {result['loss']}, "
        f"optimizer {result['optimizer']}")
    log(f"{result['device']} ({result['machine']}); {result['rounds']} alternating rounds of "
        f"{result['steps_per_round']} steps after {result['warmup_steps']} warm-up steps, median of the rounds")
    log(f"data of the full pipeline and the naive loop: {result['data']}")
    header = (f"{'path':28s} {'precision':9s} {'layout':13s} {'images/s':>9s} {'vs naive':>8s} "
              f"{'peak MB*':>9s}  rounds (images/s)")
    log("")
    log(header)
    log("-" * len(header))
    for name in PATH_NAMES:
        info = result["paths"][name]
        peak = result["peak_memory_mb"][name]
        ratio = result["images_per_s"][name] / result["images_per_s"][NAIVE]
        log(f"{name:28s} {info['precision']:9s} {info['memory_format']:13s} {result['images_per_s'][name]:9.1f} "
            f"{ratio:7.2f}x {'-' if peak is None else f'{peak:.1f}':>9s}  "
            f"{', '.join(f'{v:.1f}' for v in result['samples'][name])}")
    log("")
    log(f"speed-up of the default path over the naive loop: {result['speedup']:.2f}x on synthetic tensors, "
        f"{result['speedup_full_pipeline']:.2f}x with the full data pipeline")
    log(f"* peak MB: {result['peak_memory_method'] or 'not measured'}")


def _time_steps(step: Callable[[], torch.Tensor], warmup: int, steps: int, max_seconds: float) -> tuple[float, int]:
    """Seconds per step (median of timed steps) and how many were timed; stops early past max_seconds."""
    for _ in range(warmup):
        float(step())
    times: list[float] = []
    budget_start = time.perf_counter()
    while len(times) < steps:
        start = time.perf_counter()
        float(step())
        times.append(time.perf_counter() - start)
        if time.perf_counter() - budget_start > max_seconds:
            break
    return statistics.median(times), len(times)


def bench_models(specs: dict[str, dict] | None = None, sizes: tuple[int, ...] = (128, 256), batch_size: int = 32,
                 steps: int = 3, warmup: int = 1, max_seconds: float = 30.0, skip_gflops: float = 150.0,
                 device: str = "auto", out: str | Path | None = None,
                 log: Callable[[str], None] = print) -> list[dict]:
    """One row per (model, size). Models costlier than `skip_gflops` per image are listed, not timed."""
    from unetlab.models.registry import list_models
    from unetlab.models.summary import count_flops, count_parameters, receptive_field

    dev = resolve_device(device)
    if specs is None:  # every registered name: base architectures and their named variants
        specs = {name: {"name": name} for name in list_models()}
    loss_fn = build_loss(Config().loss)
    rows = []
    for label, spec in specs.items():
        options = {k: v for k, v in spec.items() if k != "name"}
        for size in sizes:
            seed_everything(0)
            model = create_model(spec["name"], **options).to(dev)
            gflops = count_flops(model, 1, size, size)
            field, clipped = receptive_field(model, 1)
            row = {"model": label, "size": size, "params": count_parameters(model), "gflops": gflops,
                   "receptive_field": field, "receptive_field_clipped": clipped,
                   "infer_images_per_s": None, "train_images_per_s": None, "timed_steps": 0}
            if gflops <= skip_gflops:
                model = model.to(memory_format=torch.channels_last)
                x = torch.randn(batch_size, 1, size, size, device=dev).contiguous(memory_format=torch.channels_last)
                y = (torch.rand(batch_size, 1, size, size, device=dev) > 0.6).float()
                model.eval()

                def infer() -> torch.Tensor:
                    with torch.no_grad(), autocast(dev, "bf16"):
                        return model(x).float().mean()

                seconds, _ = _time_steps(infer, warmup, steps, max_seconds)
                row["infer_images_per_s"] = batch_size / seconds
                model.train()
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
                seconds, timed = _time_steps(lambda: train_step(model, optimizer, loss_fn, x, y, "bf16"),
                                             warmup, steps, max_seconds)
                row["train_images_per_s"] = batch_size / seconds
                row["timed_steps"] = timed
            rows.append(row)
            infer_s = f"{row['infer_images_per_s']:.1f}" if row["infer_images_per_s"] else "not timed"
            train_s = f"{row['train_images_per_s']:.1f}" if row["train_images_per_s"] else "not timed"
            log(f"{label:22s} {size:4d}px  {row['params'] / 1e6:7.2f} M  {gflops:8.2f} GFLOPs  "
                f"RF {'>=' if clipped else ''}{field:4d}  infer {infer_s:>9s} img/s  train {train_s:>9s} img/s")
    if out:
        atomic_write_text(out, json.dumps({"date": date.today().isoformat(), "batch_size": batch_size,
                                           "torch": torch.__version__, "threads": torch.get_num_threads(),
                                           "rows": rows}, indent=1))
    return rows


# --------------------------------------------------------------------------- bench predict


def seismic_section(side: int, seed: int = 0) -> np.ndarray:
    """A uint8 (side, side) seismic-like section: one 512-pixel synthetic image mirrored out to the side
    (generating the whole section would take longer and more memory than predicting it)."""
    from unetlab.data.synthetic import generate_seismic

    base = generate_seismic(1, size=min(side, 512), seed=seed, empty_fraction=0.0)[0][0]
    return np.pad(base, ((0, side - base.shape[0]), (0, side - base.shape[1])), mode="symmetric")


def _bench_predictor(spec: dict[str, Any]) -> Any:
    """The run's predictor, or the config's model with random weights (seed 0) and the statistics of a section."""
    from unetlab.data.tensors import channel_stats
    from unetlab.inference.predictor import Predictor

    if spec["run"]:
        return Predictor.load(spec["run"], device="cpu")
    cfg = Config.model_validate(spec["config"])
    seed_everything(0)
    model = create_model(cfg.model.name, **cfg.model.options())
    mean, std = channel_stats(seismic_section(256)[None])
    return Predictor(model, cfg, mean, std, cfg.eval.threshold, torch.device("cpu"))


def _predict_probe_main() -> None:
    """Entry point of one `bench predict` size (`python -c`): spec as JSON on stdin, result as JSON on the last line."""
    from unetlab.inference.tiling import tile_side, tile_starts

    spec = json.loads(sys.stdin.read())
    if spec["threads"]:
        torch.set_num_threads(int(spec["threads"]))
    predictor = _bench_predictor(spec)
    side, tile, overlap, tta = int(spec["size"]), spec["tile"], spec["overlap"], spec["tta"]
    tile = predictor.config.eval.tile if tile is None else tile
    overlap = predictor.config.eval.tile_overlap if overlap is None else overlap
    tta = predictor.config.eval.tta if tta is None else tta
    tiled = predictor.uses_tiles(np.zeros((side, side), np.uint8), tile)
    tile_px = tile_side(side, tile, overlap) if tiled else side
    # Warm-up at the tile shape, outside the measurement: the first call builds kernels and folds the model.
    predictor.predict_proba([seismic_section(tile_px)], tta=tta, tile=0)
    gc.collect()
    method = "VmHWM" if _reset_peak_rss() else "ru_maxrss"
    before = _proc_status_kb("VmRSS") / 1024 if method == "VmHWM" else _ru_maxrss_mb()  # type: ignore[operator]
    image = seismic_section(side, seed=int(spec["seed"]))
    start = time.perf_counter()
    probs = predictor.predict_proba([image], tta=tta, tile=tile, overlap=overlap)[0]
    seconds = time.perf_counter() - start
    peak = _proc_status_kb("VmHWM") / 1024 if method == "VmHWM" else _ru_maxrss_mb()  # type: ignore[operator]
    grid = len(tile_starts(side, tile_px, overlap)) if tiled else 1
    print(json.dumps({
        "size": side, "seconds": seconds, "megapixels_per_s": side * side / seconds / 1e6,
        "peak_rss_mb": peak, "rss_before_mb": before, "rise_mb": peak - before,
        "image_mb": image.nbytes / 2**20, "output_mb": probs.nbytes / 2**20,
        "beyond_arrays_mb": peak - before - (image.nbytes + probs.nbytes) / 2**20,
        "rise_bytes_per_pixel": (peak - before) * 2**20 / (side * side), "method": method,
        "tiled": tiled, "tile": tile, "tile_side": tile_px, "overlap": overlap, "tiles": grid * grid, "tta": tta,
        "threads": torch.get_num_threads(), "precision": predictor.precision, "channels_last": predictor.channels_last,
        "model": predictor.config.model.model_dump(),
        "parameters": sum(p.numel() for p in predictor.model.parameters()),
    }))


def bench_predict(sizes: tuple[int, ...] = (4096,), config: Config | None = None, run: str | Path | None = None,
                  tile: int | None = None, overlap: int | None = None, tta: str | None = None,
                  out: str | Path | None = None, log: Callable[[str], None] = print, seed: int = 0,
                  timeout: float = 1800.0) -> dict:
    """Seconds and peak memory of predicting one square grey section per size (see the module docstring).

    The model is `run`'s (its config's tile, overlap, TTA, precision and memory format), else `config`'s
    (default: the tgs-salt recipe) with random weights: the timing does not depend on the weights.
    `tile`, `overlap`, `tta` override the config's eval.tile, eval.tile_overlap, eval.tta. Each size runs
    in a fresh Python process, one after the other, with this process's torch thread count. Returns
    the result that `out` receives as JSON: ``rows`` (one per size: seconds, megapixels_per_s,
    peak_rss_mb, rss_before_mb, rise_mb, image_mb, output_mb, beyond_arrays_mb, rise_bytes_per_pixel,
    tiles, tile_side, ...), ``date``, ``machine``, ``model``, ``source``, ``memory_method``.
    """
    from unetlab.inference.tiling import check_tiling

    if run is None and config is None:
        from unetlab.config import load_config

        config = load_config("tgs-salt")
    if tile is not None or overlap is not None:
        check_tiling(tile if tile is not None else 1024, overlap if overlap is not None else 0)
    spec = {"run": str(run) if run else None, "config": config.to_dict() if config else None, "tile": tile,
            "overlap": overlap, "tta": tta, "threads": torch.get_num_threads(), "seed": seed}
    rows = []
    for size in sizes:
        process = subprocess.run([sys.executable, "-c", "from unetlab.bench import _predict_probe_main; "
                                  "_predict_probe_main()"], input=json.dumps({**spec, "size": int(size)}),
                                 capture_output=True, text=True, env=_probe_env(), timeout=timeout)
        try:
            rows.append(json.loads(process.stdout.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            tail = (process.stderr.strip().splitlines() or ["no output"])[-1]
            raise UnetlabError(f"bench predict --size {size}: the probe process failed (exit code "
                               f"{process.returncode}): {tail}") from None
        row = rows[-1]
        log(f"{size}x{size}: {row['seconds']:.2f} s ({row['megapixels_per_s']:.2f} Mpx/s, {row['tiles']} tiles of "
            f"{row['tile_side']}), peak RSS {row['peak_rss_mb']:.0f} MB, +{row['rise_mb']:.0f} MB over the "
            f"{row['rss_before_mb']:.0f} MB before the section = {row['rise_bytes_per_pixel']:.1f} B/pixel "
            f"(section {row['image_mb']:.0f} MB + probabilities {row['output_mb']:.0f} MB + "
            f"{row['beyond_arrays_mb']:.0f} MB)")
    result = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}",
              "model": rows[0]["model"] if rows else None,
              "source": f"run {run}" if run else "random weights (seed 0) of the config's model",
              "memory_method": "peak resident memory (VmHWM, reset just before the section is made; ru_maxrss where "
                               "that is unavailable) of a fresh process predicting one size, and its rise over the "
                               "resident memory just before (model, libraries and warm-up excluded)",
              "rows": rows}
    if out:
        atomic_write_text(out, json.dumps(result, indent=1))
    return result
