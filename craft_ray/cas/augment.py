"""Random augmentations that keep the clinical content of an image, differentiably.

A reward averaged over small shifts, rotations, blur and pixel noise (never flips: laterality
matters) has a gradient that follows what survives them: an adversarial direction that lives in
single pixels averages out (expectation over transformations). Used by the training reward
(`reward.augment`) and by `craft cas probe --augment-copies`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from craft_ray.config import AugmentConfig


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """`cfg.copies` random augmentations of each image, (B * copies, C, H, W), differentiable:
    rotation and translation by one affine resampling (border padding), a Gaussian blur of random
    sigma, additive Gaussian noise; pixel values clamped to [0, 1]. Copy k of image i is row
    k * B + i."""
    b, _, h, w = images.shape
    n = b * cfg.copies
    x = images.repeat(cfg.copies, 1, 1, 1)
    dev, dt = images.device, images.dtype

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=dev, dtype=dt) * 2 - 1

    angle = uniform(n) * math.radians(cfg.rotate)
    shift = uniform(n, 2) * 2 * cfg.shift  # affine_grid works in [-1, 1]: the side is 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.blur > 0:
        sigma = float(torch.rand((), generator=generator, device=dev)) * cfg.blur
        if sigma > 0.1:
            radius = max(1, math.ceil(2.5 * sigma))
            coords = torch.arange(-radius, radius + 1, device=dev, dtype=dt)
            kernel = torch.exp(-(coords**2) / (2 * sigma**2))
            kernel = kernel / kernel.sum()
            c = x.shape[1]
            x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
            x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
            x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    if cfg.noise > 0:
        x = x + cfg.noise * torch.randn(x.shape, generator=generator, device=dev, dtype=dt)
    return x.clamp(0, 1)
