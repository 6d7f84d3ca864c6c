"""What a model costs and sees: parameters, GFLOPs per image, empirical receptive field.

This is what `unetlab models [--size HxW]` prints:

    rows = model_table(None, in_channels=1, size=(128, 128))   # every registered model (variants too), defaults
    rows = model_table({"fcn d1248": {"name": "fcn", "dilations": (1, 2, 4, 8)}})  # labelled option sets
    print_model_table(rows)

* `count_parameters(model)`: number of parameter elements (trainable or not).
* `count_flops(model, in_channels, height, width)`: GFLOPs of one forward pass of one image,
  counted by forward hooks (2 FLOPs per multiply-accumulate) on convolutions, transposed
  convolutions and linear layers only.
* `receptive_field(model, in_channels)`: side in pixels of the input region that the centre output
  pixel depends on, measured by back-propagation, with a flag saying whether it filled the probe.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

from unetlab.models.registry import create_model, list_models


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements of `model` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _param_like(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """Multiply-accumulates of one call of a convolution / transposed convolution / linear layer."""
    out = _first_tensor(output)
    if out is None:
        return 0
    if isinstance(module, _ConvNd):
        kernel = math.prod(module.kernel_size)
        if module.transposed:
            # every input element is multiplied by (out_channels / groups) * kernel weights
            inp = _first_tensor(inputs)
            return 0 if inp is None else inp.numel() * (module.out_channels // module.groups) * kernel
        # every output element is a dot product of (in_channels / groups) * kernel terms
        return out.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def count_flops(model: nn.Module, in_channels: int, height: int, width: int) -> float:
    """GFLOPs (1e9 floating-point operations) of one forward pass of one `in_channels`xHxW image.

    Counted: nn.Conv*d (groups, dilation, stride and padding included: the output size is taken
    from the actual forward pass), nn.ConvTranspose*d (input elements x out_channels/groups x
    kernel) and nn.Linear, at 2 FLOPs per multiply-accumulate. Multiplications by the zeros of
    padding count like any other (the usual convention of fvcore/ptflops); biases are not counted.
    Ignored as negligible: normalisation, activations, pooling, upsampling by interpolation,
    element-wise operations (additions of residuals, the scSE gates' products), concatenation, and
    any arithmetic done with torch.nn.functional calls instead of modules.

    Implementation: forward hooks on a single (1, C, H, W) input of zeros in eval mode under
    torch.no_grad(); each module's training flag is restored afterwards. A module called twice in
    one forward pass is counted twice.
    """
    device, dtype = _param_like(model)
    total = 0
    modes = [(module, module.training) for module in model.modules()]

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal total
        total += _macs(module, inputs, output)

    handles = [module.register_forward_hook(hook) for module in model.modules()
               if isinstance(module, (_ConvNd, nn.Linear))]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, height, width, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    return 2.0 * total / 1e9


def _probe_once(model: nn.Module, in_channels: int, size: int, generator: torch.Generator,
                device: torch.device) -> tuple[int, bool]:
    """One back-propagation from the centre output pixel of a size x size probe."""
    x = torch.randn(1, in_channels, size, size, generator=generator, dtype=torch.float64) * 1e-2
    x = x.to(device).requires_grad_(True)
    out = _first_tensor(model(x))
    if out is None or out.dim() < 3:
        raise ValueError("receptive_field needs a model whose output is a (N, C, H, W) map")
    height, width = out.shape[-2:]
    out[..., height // 2, width // 2].sum().backward()
    grad = x.grad.detach().abs().sum(dim=(0, 1))
    rows = torch.nonzero(grad.amax(dim=1)).flatten()
    cols = torch.nonzero(grad.amax(dim=0)).flatten()
    if rows.numel() == 0:
        return 0, False
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    side = max(bottom - top + 1, right - left + 1)
    clipped = top == 0 or left == 0 or bottom == size - 1 or right == size - 1
    return side, clipped


def receptive_field(model: nn.Module, in_channels: int, size: int | None = None, *, min_size: int = 32,
                    max_size: int = 512, trials: int = 1, seed: int = 0) -> tuple[int, bool]:
    """Empirical receptive field of the centre output pixel: `(side in pixels, clipped)`.

    A float64 copy of `model` in eval mode (the model itself is not touched) gets an input of
    zeros plus small Gaussian noise (std 0.01) that requires grad; the logits of the centre output
    pixel (H//2, W//2), summed over classes, are back-propagated, and the side is the larger of the
    height and width of the bounding box of the non-zero input gradient. Batch norm in eval mode is
    affine and dropout is off, so neither hides a dependency; float64 keeps tiny contributions from
    underflowing. Max-pooling routes the gradient to one pixel per window and channel, and a dead
    ReLU blocks it, so the measure is exact in practice (many channels) but could in principle come
    out smaller than the theoretical field; `trials` > 1 takes the union over several noise draws.

    `clipped` is True when the gradient reaches the border of the probe: the field is then at least
    the returned value (the probe side), the field of a pixel at the centre of that probe size.
    Layers that pool over the whole image make the field global, and it is reported as clipped at
    `max_size`: group and instance norm (their statistics are taken over the image in eval mode
    too), scSE's channel gate (global average pooling). So is a model with `whole_image_gate` (the U-Net's
    image_head), whose hard empty/not-empty verdict on the whole image has no gradient to probe: it is
    reported as `(size or max_size, True)` without probing.

    size: probe side. None (default): start at `min_size` and double while clipped, up to
    `max_size` (512: enough for the 4-level U-Net's 188 px; a global field costs float64 forward
    and backward passes up to 512x512, several seconds for the U-Net). The receptive field does
    not depend on channel widths, so wide models are probed at the real widths but on the smallest
    probe that contains their field (the 810-channel FCN, with a 9 px field, is probed at 32x32
    only). Models that pad to a multiple (the U-Net pads to 2**depth)
    are probed exactly once the probe reaches that multiple, as powers of two do.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if getattr(model, "whole_image_gate", False):
        return (size if size is not None else max_size), True
    device, _ = _param_like(model)
    probe = copy.deepcopy(model).to(dtype=torch.float64).eval()
    for parameter in probe.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    side = max(1, size if size is not None else min_size)
    while True:
        result = (0, False)
        for _ in range(trials):
            value, clipped = _probe_once(probe, in_channels, side, generator, device)
            result = (max(result[0], value), result[1] or clipped)
        if size is not None or not result[1] or side >= max_size:
            return result
        side = min(side * 2, max_size)


def model_table(names_and_options: Mapping[str, Mapping[str, Any]] | None = None, in_channels: int = 1,
                size: tuple[int, int] = (128, 128), *, rf_max_size: int = 512,
                seed: int = 0) -> list[dict[str, Any]]:
    """One row {name, params, gflops, receptive_field, clipped} per model.

    names_and_options: None = every registered model, named variants included, with its defaults
    (`list_models()`), or `{"label": {"name": registered_name, **options}}` (the row's name is the label).
    `in_channels` is passed to every model unless a variant sets it. GFLOPs are per image at
    `size` (H, W); the receptive field is probed adaptively up to `rf_max_size` (see
    `receptive_field`), `clipped` meaning "at least that many pixels". The probe costs a float64
    forward and backward pass at each probe size tried, so a model with a large or global field
    costs about 3x its float64 GFLOPs at `rf_max_size`: the base architectures at the defaults take
    ~17 s on one CPU thread (most of it resnet34_unet, clipped at 512), each U-Net variant ~1-2 s
    more at 256; the 810-channel `fcn` with
    group norm would take minutes at 512, so lower `rf_max_size` for such variants.
    """
    if names_and_options is None:
        variants: dict[str, dict[str, Any]] = {name: {"name": name} for name in list_models()}
    else:
        variants = {}
        for label, spec in names_and_options.items():
            if "name" not in spec:
                raise ValueError(f"model_table: variant {label!r} needs a 'name' (a registered model)")
            variants[label] = dict(spec)
    height, width = size
    rows = []
    for label, spec in variants.items():
        options = {key: value for key, value in spec.items() if key != "name"}
        options.setdefault("in_channels", in_channels)
        torch.manual_seed(seed)
        model = create_model(spec["name"], **options)
        channels = options["in_channels"]
        field, clipped = receptive_field(model, channels, max_size=rf_max_size, seed=seed)
        rows.append({
            "name": label,
            "params": count_parameters(model),
            "gflops": count_flops(model, channels, height, width),
            "receptive_field": field,
            "clipped": clipped,
        })
    return rows


def format_count(count: int) -> str:
    """1940817 -> '1.94 M', 28225 -> '28.2 k', 513 -> '513'."""
    if count >= 1_000_000:
        return f"{count / 1e6:.2f} M"
    if count >= 1_000:
        return f"{count / 1e3:.1f} k"
    return str(count)


def format_gflops(gflops: float) -> str:
    return f"{gflops:,.2f}" if gflops >= 1 else f"{gflops:.3g}"


def print_model_table(rows: list[dict[str, Any]], console: Any = None, *, title: str | None = None) -> Any:
    """Print `model_table` rows with rich: model, parameters, GFLOPs/image, receptive field (px).

    A clipped receptive field is shown as ">= N". Returns the rich Table.
    """
    from rich.console import Console
    from rich.table import Table

    console = console if console is not None else Console()
    table = Table(title=title)
    table.add_column("model")
    table.add_column("parameters", justify="right")
    table.add_column("GFLOPs/image", justify="right")
    table.add_column("receptive field px", justify="right")
    for row in rows:
        field = f">= {row['receptive_field']}" if row["clipped"] else str(row["receptive_field"])
        table.add_row(str(row["name"]), format_count(int(row["params"])), format_gflops(float(row["gflops"])), field)
    console.print(table)
    return table
