"""Text generation with a transformers image-text-to-text model, the way an OpenAI server needs it:
chat template, images through the scorer's pixel adapter, sampling settings, raw-logit logprobs
(only those asked: the chosen token's and the top k, never the whole vocabulary per step unless
k = -1), and logits processors such as a JSON grammar.

The pixels take the same path as `MLLMScorer.p_yes` (the processor builds the token ids from
placeholder images, the adapter computes the pixel values), so the first answer token's
log-probabilities served over HTTP equal the local scorer's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch
import transformers
from PIL import Image

from craft_ray.models.mllm import WHOLE_VOCABULARY, MLLMScorer, build_mllm

if TYPE_CHECKING:
    from craft_ray.serving.json_output import GrammarLogitsProcessor


@dataclass
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class StepLogprobs:
    """One generated token's log-probabilities, from the raw logits (before a grammar, temperature
    or top-k/top-p): the chosen token's and the k most likely, most likely first."""

    chosen: float
    top: list[tuple[int, float]]


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    logprobs: list[StepLogprobs] | None  # per generated token; None when not asked
    prompt_tokens: int


class LogprobRecorder(transformers.LogitsProcessor):
    """Keeps, per step, only what the answer reports: the top k of the raw logits' log-softmax and
    (at the next step, once it is chosen) the chosen token's. First in the processor list, so it
    sees the logits before any other processor changes them."""

    def __init__(self, k: int):
        self.k, self.steps, self._pending = k, [], None

    def _settle(self, chosen: int) -> None:
        logp, top = self._pending
        self.steps.append(StepLogprobs(float(logp[chosen]), top))
        self._pending = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is not None:
            self._settle(int(input_ids[0, -1]))
        logp = torch.log_softmax(scores[0].float(), dim=-1)
        k = logp.shape[0] if self.k == WHOLE_VOCABULARY else min(self.k, logp.shape[0])
        top = torch.topk(logp, k) if k else None
        pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else []
        self._pending = (logp, pairs)  # one step's full row at a time, dropped once settled
        return scores

    def finish(self, token_ids: list[int]) -> list[StepLogprobs]:
        if self._pending is not None and len(self.steps) < len(token_ids):
            self._settle(token_ids[len(self.steps)])
        return self.steps


class MLLMGenerator:
    def __init__(self, scorer: MLLMScorer, max_model_len: int | None = None):
        self.scorer = scorer
        self.model, self.processor = scorer.model, scorer.processor
        self.tokenizer = self.processor.tokenizer
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        self.max_model_len = int(max_model_len or limit or 4096)

    @classmethod
    def load(cls, source: str, max_model_len: int | None = None, dtype: str | None = None) -> MLLMGenerator:
        scorer = build_mllm(source)
        if scorer is None or not isinstance(scorer, MLLMScorer):
            raise ValueError(f"model source {source!r} is not a local model (tiny | path | hub id)")
        if dtype not in (None, "auto", "float32"):
            scorer.model.to(getattr(torch, dtype))
        return cls(scorer, max_model_len)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @cached_property
    def token_texts(self) -> list[str]:
        """Each token id decoded on its own, as OpenAI logprobs report tokens."""
        return [self.tokenizer.decode([i]) for i in range(self.vocab_size)]

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def inputs(self, prompt: str, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        placeholders = [Image.new("RGB", (int(x.shape[-1]), int(x.shape[-2]))) for x in images]
        enc = self.processor(text=[prompt], images=placeholders or None, return_tensors="pt")
        device, dtype = self.scorer.device, next(self.model.parameters()).dtype
        inputs = {k: v.to(device) for k, v in enc.items() if k not in ("pixel_values", "image_grid_thw")}
        pixels = [self.scorer.adapter(x[None].to(device, dtype)) for x in images]
        for key in pixels[0] if pixels else ():
            inputs[key] = torch.cat([p[key] for p in pixels])
        return inputs

    def generate(
        self,
        inputs: dict[str, torch.Tensor],
        settings: SamplingSettings,
        logprobs: int | None = None,
        grammar: GrammarLogitsProcessor | None = None,
        text_of: Callable[[list[int]], str] | None = None,
    ) -> Generation:
        """logprobs: None (not asked), 0 (the chosen tokens'), k or -1 (also the top k / all);
        grammar: a processor that masks the tokens it forbids; text_of: how token ids become the
        answer's text (default: the tokenizer's decode)."""
        prompt_len = int(inputs["input_ids"].shape[1])
        kwargs = dict(
            max_new_tokens=settings.max_new_tokens,
            return_dict_in_generate=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        if settings.temperature > 0:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p or 1.0)
            kwargs["top_k"] = settings.top_k if settings.top_k and settings.top_k > 0 else None
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if settings.stop:
            kwargs.update(stop_strings=settings.stop, tokenizer=self.tokenizer)
        recorder = LogprobRecorder(logprobs) if logprobs is not None else None
        processors = [p for p in (recorder, grammar) if p is not None]
        if processors:
            kwargs["logits_processor"] = transformers.LogitsProcessorList(processors)
        seed = settings.seed if settings.seed is not None else random.randrange(2**31)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.model.generate(**inputs, **kwargs)
        ids = out.sequences[0, prompt_len:].tolist()
        steps = recorder.finish(ids) if recorder is not None else None
        return self._finish(ids, steps, prompt_len, settings, text_of)

    def _finish(self, ids, steps, prompt_len, settings, text_of=None) -> Generation:
        eos = self.tokenizer.eos_token_id
        finish = "stop" if ids and ids[-1] == eos else "length"
        text = text_of(ids) if text_of else self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in settings.stop:
            at = text.find(stop)
            if at >= 0:
                text, finish = text[:at], "stop"
        if finish == "length" and len(ids) < settings.max_new_tokens:
            finish = "stop"  # a stop string ended generation early
        return Generation(ids, text, finish, steps, prompt_len)
