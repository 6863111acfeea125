# bert-pytorch developer entry points. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv system-packages test test-fast lint demo bench docs clean

venv: $(STAMP)

ifeq ($(VENV_PREBUILT),1)
# The container image's environment (Dockerfile: VENV=/opt/venv VENV_PREBUILT=1) is used as built: the
# requirement files of a checkout mounted over the image's copy must not make make reinstall it.
$(STAMP):
	@echo "error: VENV_PREBUILT=1 but $(STAMP) is missing: rebuild the image (scripts/docker/build.sh)" >&2; exit 2
else
# torch goes in first and on its own, so the CPU wheel on disk is used and no CUDA build is pulled; the
# checkout last, in editable mode (pyproject.toml), so scripts in data/, triton/ and benchmarks/ import
# the top-level modules from any folder.
$(STAMP): requirements.txt requirements-test.txt requirements-serve.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -r requirements.txt -r requirements-serve.txt -r requirements-test.txt
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)
endif

# Slurm, munge, numactl, shellcheck (.ci/system-packages.txt), installed where root with apt-get;
# elsewhere their tests skip, and pytest's last line says which were skipped and why.
system-packages:
	@bash .ci/install-system-packages.sh

test: $(STAMP) system-packages
	$(PY) -m pytest -q tests

test-fast: $(STAMP) system-packages
	$(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/shellcheck -x $$(git ls-files '*.sh' run.sub bind.sh)
	$(VENV)/bin/hadolint Dockerfile

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

# CPU benchmarks, each printing a table of ratios against its reference (minutes each on 2 cores).
bench: $(STAMP)
	$(PY) benchmarks/bench_tokenizer.py
	$(PY) benchmarks/bench_cpu_gemm.py
	$(PY) benchmarks/bench_create_pretraining_data.py
	$(PY) benchmarks/bench_pretraining.py
	$(PY) benchmarks/bench_squad.py
	$(PY) benchmarks/bench_inference.py --int8

# docs/parameters.md from every script's --help (tests/test_readme.py fails while it is stale).
docs: $(STAMP)
	$(PY) scripts/update_parameters_doc.py

clean:
	rm -rf $(VENV) results demo_out
