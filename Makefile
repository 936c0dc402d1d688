# The two commands: `make bench` (default benchmark) and `make test` (fast test tier).
# Both create .venv, install the package with its extras and the default data first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: bench test test-slow data browser venv perf clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

data:
	@bash scripts/ensure-data.sh

# the fast tier opens a report in headless Chromium (tests/test_browser.py)
browser:
	@bash scripts/ensure-chromium.sh

bench: venv data
	$(PY) -m robustpath.bench $(ARGS)

test: venv data browser
	$(PY) -m pytest -q $(ARGS)

test-slow: venv data browser
	$(PY) -m pytest -q -m slow $(ARGS)

perf: venv data
	$(PY) -m benchmarks $(ARGS)

clean-venv:
	rm -rf $(VENV)
