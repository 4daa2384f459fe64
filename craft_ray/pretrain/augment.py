"""Train-time robustness for the phantom VLMs: augmentations that keep the clinical content, and
pixel-space adversarial examples on the training loss.

- `Augment`: per image, a small random shift and rotation (bilinear, border pixels repeated), a
  Gaussian blur for a share of the images, and Gaussian pixel noise. Never a flip: laterality is
  clinical content (a mirrored chest puts the heart on the wrong side, an implausible image).
- `adversarial`: FGSM (one step) or PGD (several steps from a random start) within an L-infinity
  ball of radius eps around the images, ascending the loss the model is trained on, so the pair
  logits are pushed to answer from content rather than from pixel patterns a reward's gradient
  could exploit.

Both draw from a `torch.Generator`, so a seeded run repeats.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field


class Augment(BaseModel):
    """Magnitudes are in normalised image units (shift: share of the side; blur sigma and noise:
    at any resolution, sigma in pixels of a 64 px image)."""

    model_config = ConfigDict(extra="forbid")
    shift: float = Field(0.03, ge=0.0, le=0.2, description="max translation, share of the image side")
    rotate_deg: float = Field(4.0, ge=0.0, le=30.0, description="max rotation, degrees")
    blur_share: float = Field(0.3, ge=0.0, le=1.0, description="share of images blurred")
    blur_sigma: float = Field(0.6, ge=0.0, le=3.0, description="max blur sigma, pixels at 64 px")
    noise: float = Field(0.02, ge=0.0, le=0.2, description="max Gaussian noise sd, pixel units")

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> augmented, same shape, in [0, 1]."""
        b, c, h, w = images.shape
        u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731 - local shorthand
        angle = (2 * u(b) - 1) * math.radians(self.rotate_deg)
        shift = (2 * u(b, 2) - 1) * self.shift * 2  # affine_grid spans [-1, 1]: twice the share
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.blur_share > 0 and self.blur_sigma > 0:
            blurred = u(b) < self.blur_share
            if blurred.any():
                sigma = (0.25 + 0.75 * u(int(blurred.sum()))) * self.blur_sigma * h / 64
                out[blurred] = _blur(out[blurred], sigma)
        if self.noise > 0:
            sd = u(b, 1, 1, 1) * self.noise
            out = out + sd * torch.randn(images.shape, generator=gen)
        return out.clamp(0.0, 1.0)


def _blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (pixels) per image."""
    n, c, h, w = images.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x[None, :] / sigma[:, None].clamp(min=1e-3)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, k)
    flat = images.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def adversarial(
    images: torch.Tensor,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    eps: float,
    steps: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """Images within eps (L-infinity, pixel units) that raise `loss_of`: FGSM for one step, PGD
    from a random start for more. The model's parameter gradients are left untouched."""
    images = images.detach()
    if steps == 1:
        delta, alpha = torch.zeros_like(images), eps
    else:
        delta, alpha = (2 * torch.rand(images.shape, generator=gen) - 1) * eps, 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of((images + delta).clamp(0.0, 1.0)), delta)
        delta = (delta + alpha * grad.sign()).clamp(-eps, eps).detach()
    return (images + delta).clamp(0.0, 1.0)
