# blendstudy — reproducible BlendMask inference-optimization study.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml

# The environment profile (npu, cuda or cpu): PROFILE=... when given, else detected from the machine by
# env/detect_profile.py (stdlib only, runs before the venv exists). Printed as the first line of output.
DETECTED := $(shell $(PYTHON) env/detect_profile.py --make $(if $(PROFILE),--profile '$(PROFILE)'))
ifeq ($(strip $(DETECTED)),)
$(error cannot pick a profile: '$(PYTHON) env/detect_profile.py' failed (PYTHON=$(PYTHON); PROFILE must be npu, cuda or cpu))
endif
override PROFILE := $(firstword $(DETECTED))
# the profile whose requirements are installed: PROFILE's, except on the emulated Ascend stack
# (BLENDSTUDY_EMULATE=npu: profile npu, its stand-in torch_npu running on the cpu profile's torch)
INSTALL := $(word 2,$(DETECTED))
$(info profile: $(PROFILE) ($(wordlist 3,999,$(DETECTED))))

STAMP       := $(VENV)/.installed
REQUIRE     := env/requirements-$(INSTALL).txt
CONSTRAINTS := $(wildcard env/constraints-$(INSTALL).txt)

.PHONY: help venv test lint reproduce lab tiny-model clean

help:
	@echo "make test                       create .venv, lint, run the test suite (includes notebooks on params/ci.yaml)"
	@echo "make reproduce [PARAMS=...]     run every notebook with papermill into artifacts/<params name>/"
	@echo "make lab                        JupyterLab on notebooks/ (jupytext pairs .ipynb with .py:percent)"
	@echo "make tiny-model                 retrain the embedded default checkpoint from scratch"
	@echo "PROFILE=npu|cuda|cpu            force the environment profile (default: detected, see env/README.md)"
	@echo "PYTHON=... VENV=...             the interpreter that creates the venv, and where it goes"

# A venv belongs to one installed profile: its stamp holds the profile's name (an empty stamp predates this rule).
define check_stamp
@if [ -s $(STAMP) ] && [ "$$(cat $(STAMP))" != "$(INSTALL)" ]; then \
  echo "$(VENV) was installed for profile $$(cat $(STAMP)), not $(INSTALL): run 'make clean', or use VENV=.venv-$(INSTALL)"; \
  exit 1; \
fi
endef

# pip, setuptools and wheel are upgraded first: a fresh Python 3.9 venv has setuptools 58, which cannot
# make the PEP 660 editable install (`pip install -e .` needs setuptools >= 64).
$(STAMP): $(REQUIRE) $(CONSTRAINTS) pyproject.toml
	$(check_stamp)
	@$(PYTHON) env/detect_profile.py --fit --profile $(INSTALL)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) env/install_profile.py --profile $(INSTALL) --python $(PY)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	echo $(INSTALL) > $@

venv: $(STAMP)
	$(check_stamp)

lint: venv
	$(VENV)/bin/ruff check lib tests notebooks emulation env

test: venv lint
	$(PY) -m pytest -q

reproduce: venv
	$(PY) -m blendstudy reproduce --params $(PARAMS)

# jupytext's server extension (jupyterlab_jupytext, enabled by its install) makes JupyterLab open the
# paired .py:percent files as notebooks and save both; it reads jupytext.toml only up to the server's
# root, so the root is the repo and the page opens on notebooks/. Root (containers) needs --allow-root.
lab: venv
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks \
	  $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

tiny-model: venv
	$(PY) -m blendstudy.train --recipe tiny --out lib/blendstudy/weights/tiny_synthetic.pth

clean:
	rm -rf $(VENV) artifacts/*/
