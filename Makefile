# Two commands do all set-up:  `make demo` (install + main job)  and  `make test` (install + tests).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DEMO_OUT ?= runs/demo

.PHONY: install browser demo test lint bench clean

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

demo: install
	$(VENV)/bin/craft demo --out $(DEMO_OUT)

test: install browser
	$(VENV)/bin/ruff check craft_ray tests benchmarks
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
