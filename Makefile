# blendstudy — reproducible BlendMask inference-optimization study.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml
PROFILE ?= cpu

.PHONY: help venv test lint reproduce lab tiny-model clean

help:
	@echo "make test                       create .venv, lint, run the test suite (includes notebooks on params/ci.yaml)"
	@echo "make reproduce [PARAMS=...]     run every notebook with papermill into artifacts/<params name>/"
	@echo "make lab                        JupyterLab on notebooks/"
	@echo "make tiny-model                 retrain the embedded default checkpoint from scratch"

$(VENV)/.installed: env/requirements-$(PROFILE).txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ -f env/constraints-$(PROFILE).txt ]; then \
	  $(PY) -m pip install -q -r env/requirements-$(PROFILE).txt -c env/constraints-$(PROFILE).txt; \
	else \
	  $(PY) -m pip install -q -r env/requirements-$(PROFILE).txt; \
	fi
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check lib tests

test: venv lint
	$(PY) -m pytest -q

reproduce: venv
	$(PY) -m blendstudy reproduce --params $(PARAMS)

lab: venv
	$(VENV)/bin/jupyter lab notebooks/

tiny-model: venv
	$(PY) -m blendstudy.train --recipe tiny --out lib/blendstudy/weights/tiny_synthetic.pth

clean:
	rm -rf $(VENV) artifacts/*/
