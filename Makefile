# One-command set-up: `make test` or `make demo` on a fresh machine creates ./.venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

test: install
	$(PY) -m pytest -q --durations=15 tests

demo: install
	$(PY) -m res2net_ms.demo

bench: install
	$(PY) benchmarks/model_zoo.py

clean:
	rm -rf $(VENV) data/digits output
