# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv first.
# torch is installed alone and pinned first: 2.13.0 resolves to the local CPU build, while an
# open range would pull the multi-GB CUDA build from PyPI.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,tvm
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench teachers install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gcc-gan compile gcc_gan.zoo:resnet_generator --input-shape 1,3,256,256 \
		--target x86 --budget-macs 3e9 --out build/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) benchmarks/trace_cost.py
	$(PY) benchmarks/prune_search.py
	$(PY) benchmarks/compile_e2e.py
	$(PY) benchmarks/quant.py
	$(PY) benchmarks/size.py
	$(PY) benchmarks/cost_model.py
	$(PY) benchmarks/latency_budget.py
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/allocation.py

teachers: $(STAMP)
	$(PY) benchmarks/teachers.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
