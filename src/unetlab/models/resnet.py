"""ResNet-34 as a U-Net encoder, in plain torch.nn, with torchvision's module names.

`ResNetEncoder` registers its modules exactly as torchvision's `resnet34()` does (`conv1`, `bn1`,
`relu`, `maxpool`, `layer1` .. `layer4` of `BasicBlock`s with `conv1, bn1, relu, conv2, bn2,
downsample`), so torchvision's ImageNet checkpoint loads into it key for key; only the classifier
(`fc.weight`, `fc.bias`) is dropped, explicitly, and everything else is loaded with strict checking.
torchvision itself is not needed (its wheels are tied to CUDA builds).

`forward` returns the feature map of every stage, finest first, for the decoder's skip connections:

    stem (conv1 + bn1 + relu)   64 channels   1/2  resolution
    layer1 (after maxpool)      64            1/4
    layer2                     128            1/8
    layer3                     256            1/16
    layer4                     512            1/32
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

STAGE_CHANNELS = (64, 64, 128, 256, 512)
RESNET34_LAYERS = (3, 4, 6, 3)
CLASSIFIER_PREFIX = "fc."


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1-projected) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn the first convolution's RGB filters `[out, 3, kh, kw]` into filters for `in_channels` inputs.

    * 3 channels: unchanged (a copy).
    * 1 channel: the sum of the R, G and B filters. A grey image g seen as RGB (g, g, g) gives
      sum_c w_c * g = (sum_c w_c) * g, so the summed filter responds to a one-channel image exactly
      as the pretrained network responds to that image replicated to RGB: every pretrained layer
      after it (and its batch-norm statistics) sees inputs of the magnitude it was trained on.
    * N channels: the RGB filters repeated cyclically (R, G, B, R, ...) to N channels and scaled by
      3/N. If the N channels carry signals of similar magnitude, the response stays at the RGB
      network's magnitude (exactly so for N a multiple of 3 and identical channels) instead of
      growing by N/3, which would push every following batch norm off its learned statistics.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"adapt_first_conv expects RGB filters [out, 3, kh, kw], got {list(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if in_channels == 3:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels, device=weight.device) % 3
    return weight[:, index] * (3.0 / in_channels)


def drop_classifier(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's ResNet state dict without its ImageNet classifier (`fc.weight`, `fc.bias`)."""
    return {key: value for key, value in state_dict.items() if not key.startswith(CLASSIFIER_PREFIX)}


class ResNetEncoder(nn.Module):
    """torchvision's ResNet (BasicBlock) up to `layer4`, returning the five stage outputs."""

    def __init__(self, layers: Sequence[int] = RESNET34_LAYERS, in_channels: int = 3):
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be 4 block counts >= 1, got {tuple(layers)}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = in_channels
        self.out_channels = STAGE_CHANNELS
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        # torchvision's initialisation, so that a randomly initialised encoder matches resnet34().
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                                       nn.BatchNorm2d(planes * BasicBlock.expansion))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]

    def load_torchvision_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a torchvision ResNet state dict: `fc.*` dropped, `conv1.weight` adapted, strict otherwise.

        Any key missing from or unknown to the encoder, or any shape mismatch, raises (strict=True).
        An RGB `conv1.weight` is adapted to `in_channels` with `adapt_first_conv`; one that already
        has `in_channels` input channels is loaded as is.
        """
        weights = drop_classifier(state_dict)
        conv = weights.get("conv1.weight")
        if conv is not None and conv.ndim == 4 and conv.shape[1] == 3 and self.in_channels != 3:
            weights["conv1.weight"] = adapt_first_conv(conv, self.in_channels)
        self.load_state_dict(weights, strict=True)
