"""Ray Serve applications and their clients: the MLLM behind an OpenAI API (vLLM on GPU, a
transformers engine on CPU), the CAS evaluator service, the reader-study web app (`study_app`), and
the HTTP clients the checklist and prompt pipelines use. Serving wraps `cas` and `models`; nothing
below imports it.

Importing this package does not import Ray Serve LLM (the `llm` extra): the engine module is
loaded by Ray itself, from `serve/mllm-cpu.yaml`.
"""
