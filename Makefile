# aipower-hub: `make demo` runs the platform on this machine; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the hub must also run on the JupyterHub 5.5 that the Zero to JupyterHub 4.x chart ships
JH5 := .venv-jh5
CHP := .local/node/node_modules/.bin/configurable-http-proxy

.PHONY: demo test lint bench clean labextension

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(JH5)/.installed: pyproject.toml
	$(PYTHON) -m venv $(JH5)
	$(JH5)/bin/pip install -q --upgrade pip
	$(JH5)/bin/pip install -q -e '.[test]' 'jupyterhub==5.5.*'
	touch $@

$(CHP):
	npm install --silent --prefix .local/node configurable-http-proxy@5

demo: $(VENV)/.installed $(CHP)
	$(BIN)/python -m hub_config.demo --state state

test: $(VENV)/.installed $(JH5)/.installed $(CHP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -ra
	@echo "--- the end-to-end suite again, on JupyterHub 5.5 ---"
	AIPOWER_TEST_BACKENDS=sqlite $(JH5)/bin/python -m pytest -q -ra tests/test_e2e.py -k sqlite
	$(JH5)/bin/python -m pytest -q -ra tests/test_kube_spawner.py tests/test_helm_chart.py tests/test_images.py

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(VENV)/.installed $(CHP)
	$(BIN)/python benchmarks/spawn_latency.py

# the JupyterLab status-bar item (spawner/notebook): its built output is committed, so only
# a change to its TypeScript needs this (node and npm)
LABEXT := spawner/notebook/labextension
labextension: $(VENV)/.installed
	cd $(LABEXT) && npm ci --no-audit --no-fund && npm run clean && npx tsc
	cd $(LABEXT) && PATH="$(CURDIR)/$(BIN):$$PATH" jupyter labextension build .

clean:
	rm -rf $(VENV) $(JH5) .local state
