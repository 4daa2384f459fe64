"""craft-ray: Clinical Reward-Aligned Finetuning of text-to-image diffusion models, on Ray."""

import logging

__version__ = "0.1.0"


class _TorchvisionFallbackFilter(logging.Filter):
    """transformers warns on every import that its torchvision image processors are missing and
    that it falls back to the PIL ones; the PIL processors are the ones craft-ray uses (there is
    no CPU torchvision), so the warning is noise on every command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackFilter())
