"""Generated images in the modality's channels, as evaluation sees them.

A diffusion model's VAE decodes 3 channels whatever the modality. Evaluation stores greyscale
modalities as greyscale (PIL's `convert("L")`, ITU-R 601-2 luma), so the training reward must see
the same luma image, differentiably: otherwise the reward scores colour the evaluation never
sees (the realism dimension's colour penalty) and the two disagree on the same images.
"""

from __future__ import annotations

import torch

LUMA = (0.299, 0.587, 0.114)  # PIL's L = R * 299/1000 + G * 587/1000 + B * 114/1000


def to_modality_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, channels, H, W); luma for one-channel modalities."""
    if channels == images.shape[1]:
        return images
    if channels == 1 and images.shape[1] == 3:
        weights = torch.tensor(LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot turn {images.shape[1]}-channel images into {channels}-channel ones")
