# Set-up is part of each target: a fresh clone needs only `make demo` or `make test`.
# torch==2.13.0 goes in the same pip command as everything else (a CPU wheel here; a plain
# install would pull a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# On a GPU machine: make install TORCH_INDEX=https://download.pytorch.org/whl/cu128 (the CUDA build of the same torch)
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple,)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_INDEX) "$(TORCH)" -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	mkdir -p out
	$(VENV)/bin/vidiff generate "a red circle moving right" --seed 0 -o out/demo.mp4

# The web UI's browser test drives Debian's chromium (playwright's own browser download cannot work offline).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "make: chromium is not installed and this is not root: the browser test will be skipped (CI fails it)"; }

# The layer contracts of docs/design.md (import-linter, [tool.importlinter] in pyproject.toml).
lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports

test: $(VENV)/.installed browser lint
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.installed
	$(PY) benchmarks/unet_speed.py

# On a machine with an NVIDIA GPU: the diffusers parity tests on CUDA (fp32, fp16), then the SD 1.5 + AnimateDiff
# speed / VRAM benchmark. Without CUDA it says so in one line and exits 0. Install the CUDA torch wheel first
# (README "On a GPU").
gpu-check: $(VENV)/.installed
	@$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" || \
	  { echo "gpu-check: no CUDA device here (torch.cuda.is_available() is False); skipped"; exit 0; }; \
	$(PY) -m pytest -q tests/test_gpu.py && $(PY) benchmarks/gpu_speed.py --json gpu-check.json

.PHONY: install demo test test-fast bench browser gpu-check lint
