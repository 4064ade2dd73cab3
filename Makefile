# aipower-hub: `make demo` runs the platform on this machine; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHP := .local/node/node_modules/.bin/configurable-http-proxy

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(CHP):
	npm install --silent --prefix .local/node configurable-http-proxy@5

demo: $(VENV)/.installed $(CHP)
	$(BIN)/python -m hub_config.demo --state state

test: $(VENV)/.installed $(CHP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -ra

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(VENV)/.installed $(CHP)
	$(BIN)/python benchmarks/spawn_latency.py

clean:
	rm -rf $(VENV) .local state
