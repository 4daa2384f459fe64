"""How CRAFT weighs its reward gradient against the denoising gradient (`training.reward_balance`).

The two terms have disjoint graphs (the reward's runs through the sampler, the denoising loss's
through one UNet call on a noised real image), so each gradient is taken on its own, at the cost
of one backward pass as before, and their norms are logged every update:

- `raw`: reward_scale x the reward's gradient + lambda x the denoising gradient (lambda =
  `training.denoise_weight`). Their ratio is whatever the models make it: at initialisation on
  the chest phantoms the reward's gradient was ~36x smaller than the denoising one at lambda = 1,
  so CRAFT's update was ~97 % LoRA-SFT's.
- `ratio`: the reward's gradient rescaled so its norm is `reward_ratio` x a running average
  (`balance_momentum`) of the lambda-weighted denoising gradient's norm: the ratio holds by
  construction, whatever the reward's scale or the step.

The method returns a *surrogate* loss whose value is the objective (-reward x scale + lambda x
denoising loss) and whose gradient is exactly the combination, so the shared loop's
`loss.backward()` applies it unchanged (with micro-batch averaging and the agreement across ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-12


def _norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((g.float() ** 2).sum() for g in grads))


def _grads(
    loss: torch.Tensor | None, params: list[torch.nn.Parameter], scale: float = 1.0
) -> list[torch.Tensor]:
    """d loss / d params. `scale`: fp16 loss scaling (the loss is multiplied before the backward so
    that fp16 activations' gradients do not underflow, and the result divided after)."""
    if loss is None or not loss.requires_grad:
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(loss.float() * scale if scale != 1.0 else loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g / scale for g, p in zip(grads, params, strict=True)]


def surrogate(
    value: torch.Tensor, params: list[torch.nn.Parameter], grads: list[torch.Tensor]
) -> torch.Tensor:
    """A scalar equal to `value` whose gradient with respect to `params` is `grads`."""
    linear = sum((g.detach() * p).sum() for g, p in zip(grads, params, strict=True))
    return value.detach() + linear - linear.detach()


@dataclass
class Balance:
    mode: str  # "raw" | "ratio"
    denoise_weight: float
    reward_scale: float = 1.0
    reward_ratio: float = 1.0
    momentum: float = 0.9
    denoise_norm_avg: float | None = None  # running average (ratio mode), kept in checkpoints

    @classmethod
    def from_config(cls, training) -> Balance:
        return cls(
            training.reward_balance,
            training.denoise_weight,
            training.reward_scale,
            training.reward_ratio,
            training.balance_momentum,
        )

    def combine(
        self,
        reward: torch.Tensor,
        denoise: torch.Tensor | None,
        params: list[torch.nn.Parameter],
        loss_scale: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(surrogate loss, metrics) for a mean `reward` to maximise and a `denoise` loss (or None);
        `loss_scale`: the loop's fp16 loss scale, applied to each backward here."""
        g_reward = _grads(-reward, params, loss_scale)
        weighted = self.denoise_weight * denoise if denoise is not None else None
        g_denoise = _grads(weighted, params, loss_scale)
        n_reward, n_denoise = float(_norm(g_reward)), float(_norm(g_denoise))
        if self.mode == "ratio":
            # the average of earlier steps (every rank the same); this micro-batch's own norm at the first
            reference = self.denoise_norm_avg if self.denoise_norm_avg is not None else n_denoise
            scale = self.reward_ratio * reference / max(n_reward, EPS)
        else:
            scale = self.reward_scale
        grads = [scale * gr + gd for gr, gd in zip(g_reward, g_denoise, strict=True)]
        value = -scale * reward.detach() + (weighted.detach() if weighted is not None else 0.0)
        metrics = {
            "grad_norm_reward": n_reward,  # the raw reward's gradient (before any scaling)
            "grad_norm_denoise": n_denoise,  # lambda x the denoising gradient
            "reward_scale_applied": scale,
        }
        if n_denoise > 0:
            metrics["effective_ratio"] = scale * n_reward / n_denoise
        return surrogate(value, params, grads), metrics

    def observe(self, denoise_norm: float | None) -> None:
        """Fold one step's (rank-averaged) denoising gradient norm into the running average."""
        if denoise_norm is None or not denoise_norm == denoise_norm:  # missing, or NaN (skipped)
            return
        if self.denoise_norm_avg is None:
            self.denoise_norm_avg = float(denoise_norm)
        else:
            self.denoise_norm_avg = self.momentum * self.denoise_norm_avg + (1 - self.momentum) * float(
                denoise_norm
            )

    def state_dict(self) -> dict[str, float | None]:
        return {"denoise_norm_avg": self.denoise_norm_avg}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.denoise_norm_avg = state.get("denoise_norm_avg")
