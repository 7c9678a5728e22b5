# Two commands: `make demo` (the main job on the embedded synthetic benchmark) and `make test`.
# Each creates .venv and installs what it needs first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CLIP_BPE_DIR := $(VENV)/share/clip-bpe

.PHONY: demo test venv clean bench browser-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: on these machines torch==2.13.0 is a CPU build on local disk; elsewhere any torch>=2.4 works.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q "torch>=2.4"
	$(PY) -m pip install -q -e ".[dev,demo,browser-test]"
	# CLIP's real BPE merge list (inside the open_clip_torch wheel, not installed): the tests rebuild CLIP's
	# tokenizer from it and check the token ids stored in the MMDA and La-SoftMoE configs.
	$(PY) -m pip download -q --no-deps "open_clip_torch==3.3.0" -d $(CLIP_BPE_DIR)
	touch $(STAMP)

# The browser test of the demo app drives Debian's headless Chromium through chromedriver. Installed with apt when
# missing and this user may (root, or passwordless sudo); otherwise the test is skipped with a message saying what is
# missing. Where the browser is present after this step, `make test` requires the test to run (BIGMOE_REQUIRE_BROWSER=1).
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "chromium + chromedriver present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	else \
	  echo "WARNING: chromium/chromedriver missing and cannot be installed here (need apt-get as root); the browser test will be skipped"; \
	fi

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bigmoe-fas demo

test: $(STAMP) browser-deps
	BIGMOE_REQUIRE_BROWSER=$$(command -v chromium >/dev/null && command -v chromedriver >/dev/null && echo 1 || echo 0) \
	  CLIP_BPE_SOURCE=$$(ls $(CLIP_BPE_DIR)/open_clip_torch-*.whl) OMP_NUM_THREADS=2 $(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/bench_model.py

clean:
	rm -rf $(VENV) runs
