"""From decoded uint8 arrays to model-ready tensors: the one place where scaling and normalisation live."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def images_to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[:, None]
    else:
        array = array.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device).float().div_(255.0)


def masks_to_tensor(masks: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """bool (N, H, W) -> float32 0/1 (N, 1, H, W); class indices (uint8) -> their float values."""
    return torch.from_numpy(np.ascontiguousarray(masks)).to(device)[:, None].float()


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (float64 accumulation)."""
    array = np.asarray(images, dtype=np.float64) / 255.0
    if array.ndim == 3:
        array = array[..., None]
    flat = array.reshape(-1, array.shape[-1])
    std = flat.std(axis=0)
    return flat.mean(axis=0).tolist(), np.where(std > 1e-6, std, 1.0).tolist()


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - mean_t) / std_t
