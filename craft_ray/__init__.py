"""craft-ray: Clinical Reward-Aligned Finetuning of text-to-image diffusion models, on Ray."""

__version__ = "0.1.0"
