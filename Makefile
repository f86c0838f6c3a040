# Every target sets itself up: a fresh clone needs only python3 (>= 3.10) and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DNAS := $(VENV)/bin/dnas
# torch is pinned for these CPU machines (a local wheel); never let pip resolve it unpinned here.
TORCH_PIN ?= torch==2.13.0

.PHONY: install test demo bench bench-search bench-lsp bench-seg bench-quality bench-lut bench-skew bench-spec bench-eval gpu-check lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest -q

demo: install
	DNAS=$(abspath $(DNAS)) bash examples/demo.sh

bench: install
	$(PY) benchmarks/run_all.py

bench-search: install
	$(PY) benchmarks/search_cost.py

bench-lsp: install
	$(PY) benchmarks/lsp_train.py

bench-seg: install
	$(PY) benchmarks/seg_coco.py

bench-quality: install
	$(PY) benchmarks/search_quality.py $(ARGS)

bench-lut: install
	$(PY) benchmarks/lut_fidelity.py $(ARGS)

bench-skew: install
	$(PY) benchmarks/speed_skew.py $(ARGS)

bench-spec: install
	$(PY) benchmarks/specialisation.py $(ARGS)

bench-eval: install
	$(PY) benchmarks/eval_speed.py $(ARGS)

# No install step: on a GPU machine the check uses the python3 that holds its CUDA torch and
# never reinstalls torch (benchmarks/gpu_check.sh sets itself up offline). ARGS="--device cpu
# --quick" runs it here on tiny sizes.
gpu-check:
	PYTHON=$(if $(wildcard $(PY)),$(abspath $(PY)),python3) bash benchmarks/gpu_check.sh $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
