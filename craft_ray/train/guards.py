"""The frozen-weight guard: the base model's frozen tensors must never change during training.

Keeping an exact copy of every frozen tensor would double the model's memory (3.4 GB for an SD-1.5
UNet), and a sum of |w| misses sign flips and leaks smaller than its tolerance. A fingerprint per
tensor catches both cheaply: its float64 sum and sum of squares, and a few elements at fixed,
seeded positions, all compared exactly (the same tensor on the same device gives the same values).
"""

from __future__ import annotations

import torch

SAMPLES_PER_TENSOR = 16


def _fingerprint(tensor: torch.Tensor, seed: int) -> torch.Tensor:
    flat = tensor.detach().reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, flat.numel(), (min(SAMPLES_PER_TENSOR, flat.numel()),), generator=generator)
    values = flat.double()
    return torch.cat(
        [values.sum().view(1), values.square().sum().view(1), flat[index.to(flat.device)].double()]
    )


class FrozenFingerprint:
    """Fingerprints of a module's frozen parameters at construction; `changed()` names those that moved."""

    def __init__(self, module: torch.nn.Module):
        self.names = [name for name, p in module.named_parameters() if not p.requires_grad]
        self.reference = self._take(module)

    def _take(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        wanted = set(self.names)
        with torch.no_grad():
            return {
                name: _fingerprint(p, seed).cpu()
                for seed, (name, p) in enumerate(module.named_parameters())
                if name in wanted
            }

    def changed(self, module: torch.nn.Module) -> list[str]:
        now = self._take(module)
        missing = [name for name in self.names if name not in now]
        return missing + [
            name for name in self.names if name in now and not torch.equal(now[name], self.reference[name])
        ]
