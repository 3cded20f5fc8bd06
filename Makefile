# fieldguide: the two set-up commands are `make run` and `make test`; everything else is a convenience.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.sha256
CATALOG ?=
FIELDGUIDE_HOME ?= $(CURDIR)/.fieldguide
DEMO_DIR := $(FIELDGUIDE_HOME)/demo-catalog
PYTEST_ARGS ?=
# Label Studio lives in its own virtualenv: its pins (numpy, urllib3, opencv) clash with the project's.
LS_VENV := .venv-label-studio
LS_STAMP := $(LS_VENV)/.requirements.sha256

export FIELDGUIDE_HOME
export ZENML_CONFIG_PATH ?= $(FIELDGUIDE_HOME)/zenml
export ZENML_ANALYTICS_OPT_IN := false
export ZENML_ENABLE_RICH_TRACEBACK := false
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_ENABLE_TELEMETRY := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test lint format dashboard mlflow-ui monitor-ui serve stop bench stack-local stack-sagemaker clean demo \
	label-studio label-studio-install label-studio-stop console browser sagemaker-image

# Reinstall only when requirements.txt changed (its hash is stamped inside the venv).
install: $(STAMP)
$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing requirements into $(VENV) (first time: a few minutes)"
	@$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
	@set -o pipefail; $(PY) -m pip install -q -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@sha256sum requirements.txt > $(STAMP)

# Label Studio's virtualenv (requirements-label-studio.txt), reinstalled only when that file changes.
label-studio-install: $(LS_STAMP)
$(LS_STAMP): requirements-label-studio.txt
	@test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	@echo "installing Label Studio into $(LS_VENV) (first time: a few minutes)"
	@$(LS_VENV)/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
	@set -o pipefail; $(LS_VENV)/bin/python -m pip install -q -r requirements-label-studio.txt 2>&1 | \
		{ grep -v "is ignored: it is neither" || true; }
	@sha256sum requirements-label-studio.txt > $(LS_STAMP)

# Label Studio on 127.0.0.1:8081 for `run.py review push/pull`; admin and token from LABEL_STUDIO_USERNAME,
# LABEL_STUDIO_PASSWORD and LABEL_STUDIO_USER_TOKEN.
label-studio: install label-studio-install
	$(PY) run.py review label-studio --venv $(LS_VENV)

label-studio-stop: install
	$(PY) run.py review label-studio --stop

stack-sagemaker: install
	$(PY) run.py --stack sagemaker

# The SageMaker image of a release (bentoml containerize + docker push to ECR): make sagemaker-image RELEASE=<id>
sagemaker-image: install
	$(PY) run.py push-image --release "$(RELEASE)"

stack-local: install
	$(PY) run.py --stack local

# The main job on the embedded default: demo catalog (unless CATALOG=...), then every pipeline end to end.
run: install
	@$(PY) run.py --stack local
	@if [ -z "$(CATALOG)" ] && [ ! -f "$(DEMO_DIR)/catalog.csv" ]; then \
		$(PY) run.py data demo --out "$(DEMO_DIR)"; fi
	$(PY) run.py --pipeline all --catalog "$(if $(CATALOG),$(CATALOG),$(DEMO_DIR)/catalog.csv)"
	@echo "Demo only: approving the pending versions as the labelled demo approver 'make-run' (in real use a person decides)."
	$(PY) run.py approve-pending --by make-run --note "demo approval by make run"

# Headless Chromium for the console's browser tests: Debian's `chromium` (installed here when root with apt), or
# FIELDGUIDE_CHROMIUM=/path/to/chrome, or Playwright's own build where downloads are allowed (the GitHub workflow).
# Nothing here downloads a browser build.
browser:
	@if [ -n "$$FIELDGUIDE_CHROMIUM" ] || command -v chromium >/dev/null || ls -d $$HOME/.cache/ms-playwright/chromium-* >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }; \
	else \
		echo "the browser tests need Chromium: sudo apt-get install chromium (Debian), or" \
			".venv/bin/playwright install --with-deps chromium where downloads are allowed, or" \
			"FIELDGUIDE_CHROMIUM=/path/to/chromium"; exit 1; \
	fi

# The Label Studio test starts its own Label Studio from $(LS_VENV) (free port, temporary data) and stops it; the
# console tests start their own console and a headless Chromium, and stop them.
test: install label-studio-install browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(PY) -m pytest -m "not gpu and not aws" --durations=25 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

dashboard: install
	$(PY) run.py dashboard

# The operations console on 127.0.0.1:8090 (configs/console.yaml); users: `python run.py users add NAME --role ROLE`.
console: install
	$(PY) run.py console

mlflow-ui: install
	$(PY) run.py mlflow-ui

# Evidently's own UI over the workspace the monitor pipeline adds its reports to (configs/monitor.yaml `workspace`).
monitor-ui: install
	$(PY) run.py monitor-ui

serve: install
	$(PY) run.py serve

stop: install
	$(PY) run.py stop

bench: install
	$(PY) bench/serve.py

clean:
	@if [ -x "$(PY)" ] && [ -d "$(FIELDGUIDE_HOME)/serving" ]; then $(PY) run.py stop || true; fi
	@if [ -x "$(PY)" ] && [ -d "$(FIELDGUIDE_HOME)/label-studio" ]; then $(PY) run.py review label-studio --stop || true; fi
	rm -rf $(FIELDGUIDE_HOME) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
