"""The U-Net of the TGS Salt seed (Ronneberger et al., 2015, at base width 16), with its variants as options.

For a 128x128x1 input and the defaults: contraction blocks of two 3x3 convolutions then 2x2
max-pooling, 16 -> 32 -> 64 -> 128 channels, an 8x8x256 bottleneck; expansion by 2x2 transposed
convolutions, concatenation with the encoder map of the same level, two 3x3 convolutions; a 1x1
convolution to one logit per pixel (sigmoid at inference). Any input size works: the input is
padded to a multiple of 2**depth and the output cropped back.

The design questions (max-pooling or strided convolution, concatenated / added / max / min / no
skips, transposed or bilinear upsampling, plain or residual blocks, which normalisation, where
dropout acts) are options of the one `UNet`, each a named piece in a table; the named grid the
studies use (unet-strided3, unet-add, ..., end of this module) is registered as variants of `unet`,
models of their own. With the default options the modules, state-dict keys and shapes are exactly
the seed's, so its checkpoints load.
"""

from __future__ import annotations

import numbers
from typing import Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetlab.models.blocks import BLOCKS, NORMS, SCSE, BilinearUp, StridedDown, choose
from unetlab.models.registry import register_model, register_variant


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad bottom/right so H and W are multiples of `multiple`; return the original (H, W)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, (height, width)


# ----------------------------------------------------------------------------- the named pieces


def _maxpool(channels: int, kernel: int, norm: str) -> nn.Module:
    return nn.MaxPool2d(2)  # no parameters: the seed's model had one shared pool and the same keys


# downsample name -> factory(channels, strided_kernel, norm); the map keeps its channel count.
DOWNSAMPLES: dict[str, Callable[[int, int, str], nn.Module]] = {"maxpool": _maxpool, "strided": StridedDown}

STRIDED_KERNELS = (3, 2)


def _transposed(in_channels: int, out_channels: int, norm: str) -> nn.Module:
    return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)  # the seed's: no norm, no ReLU


# upsample name -> factory(channels below, channels of the level, norm)
UPSAMPLES: dict[str, Callable[[int, int, str], nn.Module]] = {"transposed": _transposed, "bilinear": BilinearUp}


def _concat(up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    return torch.cat([up, skip], dim=1)


def _add(up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    return up + skip


def _no_skip(up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    return up


# skip name -> (merge(upsampled, encoder map), decoder block input channels per channel of the level)
SKIPS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], int]] = {
    "concat": (_concat, 2),
    "add": (_add, 1),
    "max": (torch.maximum, 1),
    "min": (torch.minimum, 1),
    "none": (_no_skip, 1),
}


def _every(level: int, depth: int) -> bool:
    return True


def _last(level: int, depth: int) -> bool:
    return level == depth - 1


def _never(level: int, depth: int) -> bool:
    return False


# dropout_at name -> (after which downsampling levels, after every decoder block?)
DROPOUT_AT: dict[str, tuple[Callable[[int, int], bool], bool]] = {
    "bottleneck": (_last, False),
    "decoder": (_never, True),
    "encoder": (_every, False),
    "all": (_every, True),
}


# stem name -> side of the pixel blocks folded into channels before the first level (and unfolded by the head):
# "space_to_depth" runs the first level at half resolution on 2x2 blocks (pixel-unshuffle), which keeps the
# thin full-resolution layers, slow on CPUs (BENCHMARKS.md, `unetlab bench layers`), out of the model.
STEMS: dict[str, int] = {"full": 1, "space_to_depth": 2}


#: The pixel logit of an image the image-level head calls empty: exact in bf16 and fp16, and its sigmoid is 0
#: (fp32, bf16, fp16). Not larger: validation computes the loss on these gated logits, and a salt pixel under
#: a wrong "empty" verdict costs about this much BCE; -1e4 made a tiny run's first val/loss thousands of
#: times its first loss, which the divergence guard stops.
EMPTY_IMAGE_LOGIT = -100.0


def _positive_int(option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{option} must be a positive integer; got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- the model


class UNet(nn.Module):
    """A U-Net whose variants are chosen by name.

    Level l (0 = full resolution, `depth` = bottleneck) has `round(base_width * width_multiplier**l)`
    channels. Each encoder level is a block (`block`: "plain" = two 3x3 conv + norm + ReLU, the seed's;
    "residual" = the same two convolutions with an identity shortcut, or a 1x1 projection where the
    channel count changes, ReLU after the sum) followed by a 2x downsampling that keeps the channel
    count (`downsample`: "maxpool" = 2x2 max-pooling; "strided" = a learned stride-2 convolution with
    `strided_kernel` 3 (3x3, padding 1) or 2 (2x2), then norm + ReLU).

    How channel counts are matched at the skips: the upsampling step (`upsample`: "transposed" = 2x2
    stride-2 transposed convolution; "bilinear" = 2x bilinear, then 3x3 conv + norm + ReLU) already
    turns the map from below into the channel count of the level's skip (its `width`), so
    - "concat" stacks the two: the decoder block takes 2 * width channels (the seed's);
    - "add", "max", "min" merge element-wise two maps of the same shape: the decoder block takes width;
    - "none" drops the skip (the encoder map only feeds the next level): the decoder block takes width.
    The decoder block then returns `width` channels, followed by scSE if `scse`.

    `norm`: "batch", "group" (GroupNorm, up to 8 groups dividing the channels), "instance"
    (InstanceNorm2d with affine scale/shift; needs a bottleneck larger than 1x1) or "none"
    (convolutions then get a bias). `dropout` > 0 adds Dropout2d where `dropout_at` says:
    "encoder" after every downsampling, "bottleneck" only after the last one (the bottleneck's
    input), "decoder" after every decoder block, "all" both encoder and decoder (the seed's placement).

    `stem`: "full" (the seed's: the first level at the input's resolution) or "space_to_depth" (the input's
    2x2 pixel blocks become 4x the input channels, pixel-unshuffle, so every level runs at half the
    resolution; the head predicts 4 logits per class and pixel-shuffles them back to full resolution).

    `image_head` (binary models only, `classes` 1): an image-level classifier on the bottleneck (global
    average pool, one linear layer, module `image_head`) predicts one logit "this image has foreground".
    In training mode `forward` then returns `(pixel_logits, {"image": image_logits (N, 1)})` and
    `auxiliary_loss` gives its loss, `image_head_weight` * BCE against "any valid foreground pixel", which
    the training step adds to the pixel loss. In eval mode `forward` returns pixel logits only, gated hard
    at 0.5: an image whose image logit is < 0 gets `EMPTY_IMAGE_LOGIT` (-100, probability 0) at every
    pixel, so an empty verdict empties the mask at any threshold; otherwise the logits are unchanged. The
    gate is per call: tiled inference gives every tile its own verdict. Validation sees the gated logits
    too, so val/loss charges a wrong "empty" verdict about 100 per salt pixel: monitor a metric
    (train.monitor=val/tgs_map, monitor_mode=max) rather than val/loss. Without `image_head` nothing is
    computed and `image_head_weight` is unused.

    Every option is validated here; a bad value raises ValueError naming the option and the allowed
    values. With the defaults, module names and state-dict keys are the seed's
    (`encoder.{i}.{0,1,3,4}`, `bottleneck`, `upsample.{i}`, `decoder.{i}`, `attention.{i}`, `head`).
    """

    def __init__(self, in_channels: int = 1, classes: int = 1, base_width: int = 16, depth: int = 4, *,
                 width_multiplier: float = 2.0,
                 downsample: Literal["maxpool", "strided"] = "maxpool",
                 strided_kernel: Literal[3, 2] = 3,
                 skip: Literal["concat", "add", "max", "min", "none"] = "concat",
                 upsample: Literal["transposed", "bilinear"] = "transposed",
                 block: Literal["plain", "residual"] = "plain",
                 norm: Literal["batch", "group", "instance", "none"] = "batch",
                 dropout: float = 0.0,
                 dropout_at: Literal["bottleneck", "decoder", "encoder", "all"] = "all",
                 scse: bool = False,
                 stem: Literal["full", "space_to_depth"] = "full",
                 image_head: bool = False,
                 image_head_weight: float = 0.2):
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        classes = _positive_int("classes", classes)
        base_width = _positive_int("base_width", base_width)
        if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or not 1 <= depth <= 7:
            raise ValueError(f"depth must be 1..7, got {depth!r}")
        if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, numbers.Real) \
                or not width_multiplier > 0:
            raise ValueError(f"width_multiplier must be a number > 0; got {width_multiplier!r}")
        widths = [round(base_width * width_multiplier**level) for level in range(depth + 1)]
        if min(widths) < 1:
            raise ValueError(f"width_multiplier={width_multiplier!r} with base_width={base_width} gives "
                             f"a level without channels (widths {widths})")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        make_down = choose("downsample", downsample, DOWNSAMPLES)
        choose("strided_kernel", strided_kernel, dict.fromkeys(STRIDED_KERNELS))
        merge, skip_factor = choose("skip", skip, SKIPS)
        make_up = choose("upsample", upsample, UPSAMPLES)
        make_block = choose("block", block, BLOCKS)
        choose("norm", norm, NORMS)
        drop_after_level, drop_in_decoder = choose("dropout_at", dropout_at, DROPOUT_AT)
        self.stem_factor = choose("stem", stem, STEMS)
        _check_image_head(image_head, image_head_weight, classes)

        self.depth = depth
        self.widths = widths
        self.options = {
            "in_channels": in_channels, "classes": classes, "base_width": base_width, "depth": depth,
            "width_multiplier": width_multiplier, "downsample": downsample, "strided_kernel": strided_kernel,
            "skip": skip, "upsample": upsample, "block": block, "norm": norm, "dropout": dropout,
            "dropout_at": dropout_at, "scse": scse, "stem": stem, "image_head": image_head,
            "image_head_weight": image_head_weight,
        }
        self.merge = merge

        def drop(active: bool) -> nn.Module:
            return nn.Dropout2d(dropout) if active and dropout > 0 else nn.Identity()

        self.encoder = nn.ModuleList()
        self.downsample = nn.ModuleList()
        self.encoder_dropout = nn.ModuleList()
        channels = in_channels * self.stem_factor**2
        for level, width in enumerate(widths[:-1]):
            self.encoder.append(make_block(channels, width, norm))
            self.downsample.append(make_down(width, strided_kernel, norm))
            self.encoder_dropout.append(drop(drop_after_level(level, depth)))
            channels = width
        self.bottleneck = make_block(widths[-2], widths[-1], norm)
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.attention = nn.ModuleList()
        self.decoder_dropout = nn.ModuleList()
        for level in reversed(range(depth)):
            width = widths[level]
            self.upsample.append(make_up(widths[level + 1], width, norm))
            self.decoder.append(make_block(skip_factor * width, width, norm))
            self.attention.append(SCSE(width) if scse else nn.Identity())
            self.decoder_dropout.append(drop(drop_in_decoder))
        self.head = nn.Conv2d(widths[0], classes * self.stem_factor**2, 1)
        # Registered after `head` and only when asked for: the default model keeps the seed's state-dict keys.
        self.image_head: nn.Module | None = None
        if image_head:
            self.image_head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 1))
        self.image_head_weight = float(image_head_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, (height, width) = pad_to_multiple(x, 2**self.depth * self.stem_factor)
        if self.stem_factor > 1:
            x = F.pixel_unshuffle(x, self.stem_factor)
        skips = []
        for block, down, drop in zip(self.encoder, self.downsample, self.encoder_dropout):
            x = block(x)
            skips.append(x)
            x = drop(down(x))
        x = self.bottleneck(x)
        image_logits = self.image_head(x) if self.image_head is not None else None
        for up, block, attention, drop, skip in zip(self.upsample, self.decoder, self.attention,
                                                    self.decoder_dropout, reversed(skips)):
            x = drop(attention(block(self.merge(up(x), skip))))
        x = self.head(x)
        if self.stem_factor > 1:
            x = F.pixel_shuffle(x, self.stem_factor)
        x = x[..., :height, :width]
        if image_logits is None:
            return x
        if self.training:
            return x, {"image": image_logits}
        return x.masked_fill(image_logits.view(-1, 1, 1, 1) < 0, EMPTY_IMAGE_LOGIT)

    @property
    def whole_image_gate(self) -> bool:
        """Whether every output pixel depends on the whole image through a hard verdict (no gradient shows it)."""
        return self.image_head is not None

    def auxiliary_loss(self, aux: dict[str, torch.Tensor], masks: torch.Tensor,
                       valid: torch.Tensor | None = None) -> torch.Tensor:
        """`image_head_weight` * BCE of the image logits against "the image has a foreground pixel among its
        valid ones" (float32, mean over the batch); `aux` is what `forward` returned beside the pixel logits."""
        foreground = masks > 0.5
        if valid is not None:
            foreground = foreground & valid.reshape(masks.shape).bool()
        target = foreground.flatten(1).any(dim=1, keepdim=True).float()
        bce = F.binary_cross_entropy_with_logits(aux["image"].float(), target)
        return self.image_head_weight * bce


def _check_image_head(image_head: object, weight: object, classes: int) -> None:
    if not isinstance(image_head, bool):
        raise ValueError(f"image_head must be true or false; got {image_head!r}")
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 < weight < float("inf"):
        raise ValueError(f"image_head_weight must be a number > 0; got {weight!r}")
    if image_head and classes != 1:
        raise ValueError(f"image_head needs a binary model (classes 1); got classes={classes}: "
                         "set model.image_head=false or model.classes=1")


# The class is its own factory: one signature, so the registry's option check reads the class's.
unet = register_model("unet")(UNet)


# The named variants of the design questions: models of their own in the one name space, each `unet`
# with these options as its defaults (a config or create_model call may still override them).
register_variant("unet-strided3", base="unet", downsample="strided", strided_kernel=3)
register_variant("unet-strided2", base="unet", downsample="strided", strided_kernel=2)
register_variant("unet-add", base="unet", skip="add")
register_variant("unet-max", base="unet", skip="max")
register_variant("unet-min", base="unet", skip="min")
register_variant("unet-noskip", base="unet", skip="none")
register_variant("unet-bilinear", base="unet", upsample="bilinear")
register_variant("unet-residual", base="unet", block="residual")
register_variant("unet-groupnorm", base="unet", norm="group")
register_variant("unet-instancenorm", base="unet", norm="instance")
register_variant("unet-nonorm", base="unet", norm="none")
register_variant("unet-scse", base="unet", scse=True)
register_variant("unet-s2d", base="unet", stem="space_to_depth")
register_variant("unet-imagehead", base="unet", image_head=True)
