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

STAMP   := $(VENV)/.installed
REQUIRE := env/requirements-$(INSTALL).txt
# the profile's hash-pinned locks (env/locks/<profile>-py<X.Y>-<machine>.txt; `make lock` writes them)
LOCKS   := $(wildcard env/locks/$(INSTALL)-*.txt)
# make lock: the uv that resolves (the venv's, pinned in env/requirements-*.txt; else uv on PATH), folders
# holding local builds (default: pip's find-links), FORCE=1 to regenerate unchanged locks
UV         ?= $(firstword $(wildcard $(VENV)/bin/uv) uv)
FIND_LINKS ?=

.PHONY: help venv lock test lint reproduce lab tiny-model clean

help:
	@echo "make test                       create .venv, lint, run the test suite (includes notebooks on params/ci.yaml)"
	@echo "make reproduce [PARAMS=...]     run every notebook with papermill into artifacts/<params name>/"
	@echo "make lab                        JupyterLab on notebooks/ (jupytext pairs .ipynb with .py:percent)"
	@echo "make tiny-model                 retrain the embedded default checkpoint from scratch"
	@echo "make lock [FORCE=1]             regenerate env/locks/ where a requirements file changed (uv)"
	@echo "PROFILE=npu|cuda|cpu            force the environment profile (default: detected, see env/README.md)"
	@echo "PYTHON=... VENV=...             the interpreter that creates the venv, and where it goes"

# A venv belongs to one installed profile: its stamp holds the profile's name (an empty stamp predates this rule).
define check_stamp
@if [ -s $(STAMP) ] && [ "$$(cat $(STAMP))" != "$(INSTALL)" ]; then \
  echo "$(VENV) was installed for profile $$(cat $(STAMP)), not $(INSTALL): run 'make clean', or use VENV=.venv-$(INSTALL)"; \
  exit 1; \
fi
endef

# The venv holds exactly the profile's lock for its Python and machine, installed with --require-hashes
# (the lock's pip first; its setuptools >= 64 makes the PEP 660 editable install), then the project
# itself, editable, outside the hash check.
$(STAMP): $(REQUIRE) $(LOCKS) pyproject.toml
	$(check_stamp)
	@$(PYTHON) env/detect_profile.py --fit --profile $(INSTALL)
	$(PYTHON) -m venv $(VENV)
	$(PY) env/install_profile.py --profile $(INSTALL) --python $(PY)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) env/jupyterlab/install.py
	echo $(INSTALL) > $@

venv: $(STAMP)
	$(check_stamp)

# Every profile's locks; only those whose requirements file changed are resolved again (a no-op otherwise).
lock:
	$(PYTHON) env/lock.py --uv $(UV) $(if $(FORCE),--force) $(foreach d,$(FIND_LINKS),--find-links $(d))

lint: venv
	$(VENV)/bin/ruff check lib tests notebooks emulation env

test: venv lint
	$(PY) -m pytest -q

reproduce: venv
	$(PY) -m blendstudy reproduce --params $(PARAMS)

# jupytext's server extension (jupyterlab_jupytext, enabled by its install) makes JupyterLab open the
# paired .py:percent files as notebooks and save both; it reads jupytext.toml only up to the server's
# root, so the root is the repo and the page opens on notebooks/. Root (containers) needs --allow-root.
# env/jupyterlab/install.py (run by make venv, again here for a venv made before it) opens a .py as a
# notebook, saves notebooks/ without outputs and sets up the git filter nbstripout.
lab: venv
	@$(PY) env/jupyterlab/install.py
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks \
	  $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

tiny-model: venv
	$(PY) -m blendstudy.training --schedule tiny --out lib/blendstudy/weights/tiny_synthetic.pth

clean:
	rm -rf $(VENV) artifacts/*/
