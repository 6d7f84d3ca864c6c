"""U-Net with a ResNet-34 encoder (optionally ImageNet-pretrained), the encoder of top TGS Salt solutions.

Encoder: `ResNetEncoder` (torchvision's ResNet-34 layout), stage outputs at 1/2 .. 1/32 resolution.
Decoder: five steps, each a bilinear x2 upsampling, concatenation with the encoder map of the same
resolution (1/16, 1/8, 1/4, 1/2; none at the last, full-resolution step), two 3x3 convolutions with
batch norm and ReLU and optional scSE; then a 1x1 convolution to `classes` logits per pixel.
Any input size works: the input is padded to a multiple of 32 (reflect, replicate when the image is
smaller than the padding) and the output cropped back.

With `encoder_weights` (see `unetlab.models.weights`), the encoder starts from those weights, its
first convolution adapted to `in_channels`, and the model carries `input_mean` / `input_std`: the
ImageNet normalisation the weights were trained with, which the trainer and predictor should use
instead of statistics of the data. Without weights both are None. `freeze_encoder(True)` trains the
decoder alone (e.g. for the first epochs) with the encoder's batch-norm statistics fixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetlab.errors import UnetlabError
from unetlab.models.blocks import SCSE, ConvBlock
from unetlab.models.registry import register_model
from unetlab.models.resnet import ResNetEncoder, drop_classifier
from unetlab.models.unet import pad_to_multiple
from unetlab.models.weights import WEIGHTS, load_encoder_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT_STRIDE = 32


def _load_encoder(encoder: ResNetEncoder, spec: str | Path) -> None:
    """The weights `spec` names into `encoder`; keys or shapes that do not fit are one line naming the file."""
    state = load_encoder_weights(spec)
    expected, given = encoder.state_dict(), drop_classifier(state)
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    reshaped = [key for key in expected if key in given and key != "conv1.weight"  # conv1 is adapted to the input
                and tuple(given[key].shape) != tuple(expected[key].shape)]
    problems = [f"{len(keys)} {what} (e.g. {', '.join(keys[:2])})" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if keys]
    detail = "keys " + "; ".join(problems)
    if not problems:
        try:
            encoder.load_torchvision_state_dict(state)
            return
        except RuntimeError as exc:  # conv1 that cannot be adapted: torch's lines after its heading say why
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = lines[-1][:200]
    official = WEIGHTS["imagenet"][0].rsplit("/", 1)[-1]
    raise UnetlabError(f"model.encoder_weights: {spec} does not fit the ResNet-34 encoder: {detail}; pass a "
                       f"torchvision-compatible ResNet-34 state dict ({official}, or the state_dict() of "
                       "torchvision.models.resnet34)")


def imagenet_normalization(in_channels: int) -> tuple[list[float], list[float]]:
    """ImageNet mean and std for `in_channels` inputs in [0, 1] units.

    One channel: the means of the RGB values (a grey image is the average of its RGB look-alike,
    and the first convolution's filters are the RGB sum, see `adapt_first_conv`). N channels: the
    RGB values repeated cyclically, as the first convolution's filters are.
    """
    if in_channels == 1:
        return [sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]
    return ([IMAGENET_MEAN[i % 3] for i in range(in_channels)],
            [IMAGENET_STD[i % 3] for i in range(in_channels)])


class DecoderBlock(nn.Module):
    """Bilinear x2 upsampling, concatenation with the skip (if any), two 3x3 conv+BN+ReLU, optional scSE."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, scse: bool = False):
        super().__init__()
        self.conv = ConvBlock(in_channels + skip_channels, out_channels)
        self.attention = SCSE(out_channels) if scse else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.attention(self.conv(x))


class ResNetUNet(nn.Module):
    def __init__(self, in_channels: int = 1, classes: int = 1, encoder_weights: str | Path | None = None,
                 decoder_widths: Sequence[int] = (256, 128, 64, 32, 16), scse: bool = False):
        super().__init__()
        decoder_widths = tuple(int(w) for w in decoder_widths)
        if len(decoder_widths) != 5 or min(decoder_widths) < 1:
            raise ValueError(f"decoder_widths must be 5 positive widths (one per upsampling step), "
                             f"got {list(decoder_widths)}")
        if in_channels < 1 or classes < 1:
            raise ValueError(f"in_channels and classes must be >= 1, got {in_channels} and {classes}")
        self.encoder = ResNetEncoder(in_channels=in_channels)
        # Skips for the steps to 1/16, 1/8, 1/4, 1/2 and none for the full-resolution step.
        skip_channels = list(reversed(self.encoder.out_channels[:-1])) + [0]
        channels = self.encoder.out_channels[-1]
        self.decoder = nn.ModuleList()
        for skip, width in zip(skip_channels, decoder_widths):
            self.decoder.append(DecoderBlock(channels, skip, width, scse))
            channels = width
        self.head = nn.Conv2d(channels, classes, kernel_size=1)

        self.encoder_weights = None if encoder_weights is None else str(encoder_weights)
        self.input_mean: Optional[list[float]] = None
        self.input_std: Optional[list[float]] = None
        if encoder_weights is not None:
            _load_encoder(self.encoder, encoder_weights)
            self.input_mean, self.input_std = imagenet_normalization(in_channels)
        self._encoder_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (height, width) = pad_to_multiple(x, OUTPUT_STRIDE)
        features = self.encoder(x)
        skips = list(reversed(features[:-1])) + [None]
        x = features[-1]
        for block, skip in zip(self.decoder, skips):
            x = block(x, skip)
        return self.head(x)[..., :height, :width]

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The encoder's parameters (e.g. for their own optimiser group or learning rate)."""
        return self.encoder.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the encoder (decoder blocks and head)."""
        encoder = {id(p) for p in self.encoder.parameters()}
        return (p for p in self.parameters() if id(p) not in encoder)

    @property
    def encoder_frozen(self) -> bool:
        return self._encoder_frozen

    def freeze_encoder(self, frozen: bool = True) -> "ResNetUNet":
        """Stop (or resume) training the encoder: no gradients, and its batch norms kept in eval mode.

        While frozen, the encoder's batch-norm layers normalise with their stored running statistics
        and do not update them, also when the model is in training mode (`train()` keeps them in
        eval). Unfreezing returns them to the model's current mode.
        """
        self._encoder_frozen = bool(frozen)
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "ResNetUNet":
        super().train(mode)
        if self._encoder_frozen:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


@register_model("resnet34_unet")
def resnet34_unet(in_channels: int = 1, classes: int = 1, encoder_weights: Optional[str] = None,
                  decoder_widths: tuple[int, ...] = (256, 128, 64, 32, 16), scse: bool = False) -> ResNetUNet:
    return ResNetUNet(in_channels, classes, encoder_weights, decoder_widths, scse)
