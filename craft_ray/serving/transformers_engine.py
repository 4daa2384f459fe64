"""A Ray Serve LLM engine that runs a transformers image-text-to-text model on CPU (or one GPU),
in place of vLLM, behind Ray's own OpenAI ingress (`serve/mllm-cpu.yaml`).

Ray's `LLMServer` builds the engine named by `RAYLLM_VLLM_ENGINE_CLS` (set in the LLMConfig's
`runtime_env.env_vars`). Engine kwargs use vLLM's names: `max_model_len`, `max_logprobs` (20 by
default; -1 serves the whole vocabulary), `seed`, `dtype`. Two bounds of this engine's own go
under the LLMConfig's `experimental_configs` (Ray checks engine kwargs against vLLM's): `max_tokens`
(the most a request may generate per choice, and what it gets when it names none; default 1024)
and `max_n` (choices per request; default 8). JSON output (`response_format`) is
constrained token by token with xgrammar, as vLLM does: every 200 answer parses and matches its
schema. An answer cut short by max_tokens is generated again (another seed), up to `JSON_ATTEMPTS`
times, then refused with 422; a schema the grammar cannot enforce is a 400.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    ErrorInfo,
    ErrorResponse,
)
from ray.llm._internal.serve.core.engine.protocol import LLMEngine
from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionLogProb,
    ChatCompletionLogProbs,
    ChatCompletionLogProbsContent,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatMessage,
)
from vllm.entrypoints.serve.engine.protocol import UsageInfo

from craft_ray.serving.chat_inputs import ChatInputError, convert_messages
from craft_ray.serving.json_output import (
    GrammarLogitsProcessor,
    JSONGrammars,
    JSONRequirement,
    requirement_from,
)
from craft_ray.serving.mllm_generation import (
    WHOLE_VOCABULARY,
    Generation,
    MLLMGenerator,
    SamplingSettings,
)

logger = logging.getLogger("ray.serve")
JSON_ATTEMPTS = 3
DEFAULT_MAX_TOKENS, DEFAULT_MAX_N = 1024, 8
SUPPORTED_ENGINE_KWARGS = {"max_model_len", "max_logprobs", "seed", "dtype"}


class IncompleteJSON(ValueError):
    """No complete JSON answer within max_tokens (HTTP 422: a larger max_tokens may get one)."""


def error_response(message: str, code: int = 400, kind: str = "BadRequestError") -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=message, type=kind, code=code))


class TransformersEngine(LLMEngine):
    def __init__(self, llm_config):
        self.llm_config = llm_config
        kwargs = dict(llm_config.engine_kwargs)
        unsupported = sorted(set(kwargs) - SUPPORTED_ENGINE_KWARGS)
        if unsupported:
            logger.warning("TransformersEngine ignores engine_kwargs %s", unsupported)
        self.max_logprobs = int(kwargs.get("max_logprobs", 20))
        bounds = dict(llm_config.experimental_configs or {})
        self.max_tokens = int(bounds.get("max_tokens", DEFAULT_MAX_TOKENS))
        self.max_n = int(bounds.get("max_n", DEFAULT_MAX_N))
        if self.max_tokens < 1 or self.max_n < 1:
            raise ValueError(f"experimental_configs: max_tokens and max_n must be at least 1 (got {bounds})")
        # like vLLM's engine seed: requests without a seed draw theirs from one seeded stream
        self.rng = random.Random(kwargs.get("seed"))
        self.kwargs = kwargs
        self.source = llm_config.model_loading_config.model_source or llm_config.model_id
        self.generator: MLLMGenerator | None = None
        self.grammars: JSONGrammars | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mllm")  # one forward at a time

    async def start(self) -> None:
        self.generator = await asyncio.get_running_loop().run_in_executor(
            self.pool,
            lambda: MLLMGenerator.load(
                str(self.source), self.kwargs.get("max_model_len"), self.kwargs.get("dtype")
            ),
        )
        _ = self.generator.token_texts  # decode the vocabulary once, not on the first request
        self.grammars = JSONGrammars(self.generator.tokenizer, self.generator.vocab_size)
        logger.info("TransformersEngine serving %s from %s", self.llm_config.model_id, self.source)

    def routing_stats(self) -> dict:
        return {}

    async def resolve_lora(self, lora_model) -> None:
        raise NotImplementedError("TransformersEngine serves no LoRA adapters")

    async def reset_prefix_cache(self) -> None:
        return None

    async def check_health(self) -> None:
        if self.generator is None:
            raise RuntimeError("TransformersEngine has not started")

    # -- requests -------------------------------------------------------------------------------

    def _settings(self, request, prompt_tokens: int) -> SamplingSettings:
        room = self.generator.max_model_len - prompt_tokens
        if room < 1:
            raise ChatInputError(
                f"the prompt has {prompt_tokens} tokens; this model's context is {self.generator.max_model_len}"
            )
        wanted = request.max_completion_tokens or request.max_tokens
        if wanted is not None and wanted < 1:
            raise ChatInputError("max_tokens must be at least 1")
        if wanted is not None and wanted > self.max_tokens:
            raise ChatInputError(
                f"max_tokens {wanted} is over this server's limit of {self.max_tokens} (experimental_configs.max_tokens)"
            )
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        temperature = 1.0 if request.temperature is None else float(request.temperature)
        seed = request.seed if request.seed is not None else self.rng.randrange(2**31)
        budget = min(wanted or self.max_tokens, room)
        return SamplingSettings(budget, temperature, request.top_p, request.top_k, seed, stop)

    def _check_logprobs(self, request) -> int | None:
        if not request.logprobs:
            return None
        k = request.top_logprobs or 0
        limit = self.max_logprobs
        if limit != WHOLE_VOCABULARY and (k == WHOLE_VOCABULARY or k > limit):
            raise ChatInputError(
                f"requested {k} top logprobs; this server allows at most {limit} (engine_kwargs.max_logprobs)"
            )
        return k

    def _run(self, request) -> tuple[list[Generation], int | None]:
        """Blocking: check the request, build inputs, generate n choices (JSON ones constrained)."""
        if getattr(request, "structured_outputs", None) is not None:
            raise ChatInputError("structured_outputs is not supported here; use response_format")
        n = request.n or 1
        if n > self.max_n:
            raise ChatInputError(
                f"n = {n} is over this server's limit of {self.max_n} (experimental_configs.max_n)"
            )
        top_k = self._check_logprobs(request)
        requirement = requirement_from(request.response_format)
        grammar = self.grammars.compile(requirement) if requirement else None
        if requirement and request.stop:
            raise ChatInputError("stop cannot be combined with a JSON response_format: it would cut the JSON")
        messages, images = convert_messages(request.messages, self.generator.scorer.input_size)
        prompt = self.generator.chat_prompt(messages, request.add_generation_prompt)
        inputs = self.generator.inputs(prompt, images)
        settings = self._settings(request, int(inputs["input_ids"].shape[1]))
        choices = []
        for index in range(n):
            seed = None if settings.seed is None else settings.seed + index
            one = replace(settings, seed=seed)
            if requirement is None:
                choices.append(self.generator.generate(inputs, one, top_k))
            else:
                choices.append(self._generate_json(inputs, one, top_k, requirement, grammar))
        return choices, top_k

    def _generate_json(
        self, inputs, settings: SamplingSettings, top_k: int | None, requirement: JSONRequirement, grammar
    ) -> Generation:
        """Constrained generation: a finished answer is valid by construction (and checked); one cut
        short by max_tokens is drawn again with other seeds, then refused."""
        problem = None
        for attempt in range(JSON_ATTEMPTS):
            seed = None if settings.seed is None else settings.seed + 1000 * attempt
            # a greedy answer that did not finish would not finish the next time either
            temperature = settings.temperature if attempt == 0 else max(settings.temperature, 1.0)
            generation = self.generator.generate(
                inputs,
                replace(settings, seed=seed, temperature=temperature),
                top_k,
                GrammarLogitsProcessor(grammar),
                self.grammars.text,
            )
            problem = requirement.problem(generation.text)
            if problem is None:
                return generation
            logger.info(
                "JSON answer attempt %d %s (%s); generating again",
                attempt + 1,
                problem,
                generation.finish_reason,
            )
        raise IncompleteJSON(
            f"no complete JSON answer within max_tokens = {settings.max_new_tokens} in {JSON_ATTEMPTS} attempts "
            f"(the last: {problem}); raise max_tokens, or bound the schema (maxLength, maxItems, enum)"
        )

    def _logprobs(self, generation: Generation, top_k: int | None) -> ChatCompletionLogProbs | None:
        if top_k is None or generation.logprobs is None:
            return None
        texts, content = self.generator.token_texts, []
        for token_id, step in zip(generation.token_ids, generation.logprobs, strict=True):
            content.append(
                ChatCompletionLogProbsContent(
                    token=texts[token_id],
                    logprob=max(step.chosen, -9999.0),
                    bytes=list(texts[token_id].encode()),
                    top_logprobs=[
                        ChatCompletionLogProb(
                            token=texts[i], logprob=max(v, -9999.0), bytes=list(texts[i].encode())
                        )
                        for i, v in step.top
                    ],
                )
            )
        return ChatCompletionLogProbs(content=content)

    async def chat(self, request, raw_request_info=None) -> AsyncGenerator[Any, None]:
        try:
            choices, top_k = await asyncio.get_running_loop().run_in_executor(self.pool, self._run, request)
        except IncompleteJSON as exc:
            yield error_response(str(exc), 422, "UnprocessableEntityError")
            return
        except (ChatInputError, ValueError) as exc:
            yield error_response(str(exc))
            return
        model = request.model or self.llm_config.model_id
        prompt_tokens = choices[0].prompt_tokens
        completion = sum(len(c.token_ids) for c in choices)
        usage = UsageInfo(
            prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
        )
        if request.stream:
            for chunk in self._stream_chunks(request, model, choices, top_k, usage):
                yield chunk
            return
        yield ChatCompletionResponse(
            id=f"chatcmpl-{request.request_id}",
            model=model,
            choices=[
                ChatCompletionResponseChoice(
                    index=i,
                    message=ChatMessage(role="assistant", content=c.text),
                    logprobs=self._logprobs(c, top_k),
                    finish_reason=c.finish_reason,
                )
                for i, c in enumerate(choices)
            ],
            usage=usage,
        )

    def _stream_chunks(self, request, model, choices, top_k, usage):
        """Server-sent events: the role, the text and the finish reason per choice (the text in one
        delta: generation has finished before the first byte is sent)."""
        rid = f"chatcmpl-{request.request_id}"

        def event(choice: ChatCompletionResponseStreamChoice, with_usage: bool = False) -> str:
            chunk = ChatCompletionStreamResponse(
                id=rid, model=model, choices=[choice], usage=usage if with_usage else None
            )
            return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

        for i, c in enumerate(choices):
            yield event(
                ChatCompletionResponseStreamChoice(index=i, delta=DeltaMessage(role="assistant", content=""))
            )
            yield event(
                ChatCompletionResponseStreamChoice(
                    index=i, delta=DeltaMessage(content=c.text), logprobs=self._logprobs(c, top_k)
                )
            )
            last = i == len(choices) - 1
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            yield event(
                ChatCompletionResponseStreamChoice(
                    index=i, delta=DeltaMessage(), finish_reason=c.finish_reason
                ),
                with_usage=last and include_usage,
            )
        yield "data: [DONE]\n\n"

    async def completions(self, request, raw_request_info=None) -> AsyncGenerator[Any, None]:
        yield error_response("/v1/completions is not served by the CPU engine; use /v1/chat/completions")

    async def embeddings(self, request, raw_request_info=None) -> AsyncGenerator[Any, None]:
        yield error_response("embeddings are not served by this engine")

    async def transcriptions(self, request, raw_request_info=None) -> AsyncGenerator[Any, None]:
        yield error_response("transcriptions are not served by this engine")
