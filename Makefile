# Two commands do all set-up:  `make demo` (install + main job)  and  `make test` (install + tests).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DEMO_OUT ?= runs/demo

.PHONY: install install-llm browser demo test lint bench clean

# torch first, from the pinned CPU build where the machine has one (pip's find-links); the package
# pins torch==2.13.0 too, so the second install never swaps it for a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The reader-study browser test drives Debian's chromium with chromedriver (selenium). Installed with
# apt only when missing, so the target costs nothing once they are there; as root, or through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; else \
	  echo "installing chromium + chromium-driver with apt (browser tests)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	  || { $(SUDO) apt-get update -qq && \
	       $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }; \
	fi

# Ray Serve LLM for the MLLM service (`serve/mllm*.yaml`) and its tests; `make demo` does not need it.
# ray[llm] brings vllm 0.29.0 (torch==2.13.0, as ours, so torch stays the CPU build); it also pulls
# CUDA-only torchvision/torchaudio wheels that fail to import on CPU machines, and flashinfer,
# which diffusers imports when present and which then fails on CPU (no AutoencoderKL): remove
# the three; nothing we run needs them. vLLM itself must be importable (Ray's OpenAI models subclass vLLM's) but
# never runs on CPU: serve/mllm-cpu.yaml swaps in the project's transformers engine.
$(VENV)/.llm-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev,llm]"
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio flashinfer-python
	$(PY) -c "import torch, sys; sys.exit(0 if torch.__version__ == '2.13.0+cpu' or torch.cuda.is_available() else 'ray[llm] replaced the CPU torch build: ' + torch.__version__)"
	$(PY) -c "import ray.serve.llm; from diffusers import AutoencoderKL, UNet2DConditionModel"
	touch $@

install-llm: $(VENV)/.llm-installed

demo: install
	$(VENV)/bin/craft demo --out $(DEMO_OUT)

test: install-llm browser
	$(VENV)/bin/ruff check craft_ray tests benchmarks
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
