# The two commands a newcomer runs: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# Debian packages the tests start for real (promtool comes with prometheus).
DEB_TOOLS := prometheus:prometheus promtool:prometheus prometheus-alertmanager:prometheus-alertmanager amtool:prometheus-alertmanager
# The Kerberos tests' real KDC (MIT), its admin tool, the client tools and faketime (a lab
# computer with a skewed clock).
DEB_TOOLS += krb5kdc:krb5-kdc kadmin.local:krb5-admin-server kinit:krb5-user faketime:faketime
PYTEST_ARGS ?=
# apt-get behind one lock, so that two makes (or two worktrees) installing at once wait for
# each other instead of failing on dpkg's lock.
APT_INSTALL = flock /tmp/.vmm-cert-exporter-apt.lock sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$$@"' apt-install

.PHONY: test demo lint typecheck unit e2e tools bench clean venv dashboard

test: venv tools node lint typecheck unit e2e

venv: $(STAMP)

# The product and, beside it, the lab (exporter/lab: the simulated fleet, the demo and the
# tests' helpers), both editable; only the product is ever built into a wheel or an image.
$(STAMP): pyproject.toml exporter/lab/pyproject.toml
	@if ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null; then \
	  echo ">> installing python3-venv"; \
	  $(APT_INSTALL) python3-venv; fi
	@# pykerberos (pywinrm[kerberos]) and gssapi have no Linux wheels: they build against MIT krb5
	@command -v krb5-config >/dev/null 2>&1 || $(APT_INSTALL) libkrb5-dev
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' -e exporter/lab
	touch $@

# Install the Debian packages whose binaries the tests run, when any is missing.
tools:
	@missing=""; for pair in $(DEB_TOOLS); do bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$bin >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  pkgs=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	  echo ">> installing Debian packages: $$pkgs"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root (or sudo make tools) to install: $$pkgs" >&2; exit 1; fi; \
	  $(APT_INSTALL) $$pkgs; \
	fi

# The PowerShell grammar (tree-sitter-powershell, run by web-tree-sitter) parses every shipped script.
node: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || $(APT_INSTALL) nodejs npm
	npm ci --silent --no-audit --no-fund
	touch $@

# lint-imports: the contracts of pyproject.toml (the product never imports the lab; the
# simulated fleet imports nothing of the product)
lint: venv
	$(BIN)/ruff check exporter tests bench
	$(BIN)/ruff format --check exporter tests bench
	$(BIN)/lint-imports --no-cache --no-logo

typecheck: venv
	$(BIN)/mypy

# The fast tests first, then the end-to-end ones (marked e2e: they start the exporter's
# command, Prometheus or Alertmanager, or run the closed loop). Exit status 5 is "no test
# selected", which PYTEST_ARGS naming a single file may cause in one of the two runs.
unit: venv
	$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS) || [ $$? -eq 5 ]

e2e: venv tools
	$(BIN)/pytest -m e2e $(PYTEST_ARGS) || [ $$? -eq 5 ]

demo: venv tools
	$(BIN)/vmm-cert-exporter demo

# Regenerate the committed Grafana dashboard from its generator (a test compares the two).
dashboard: venv
	$(BIN)/python exporter/tools/dashboard.py > grafana/dashboards/vmm-certificates.json

bench: venv tools
	$(BIN)/pip install -q -e '.[test,bench]'
	@command -v prometheus-blackbox-exporter >/dev/null 2>&1 || \
	  $(APT_INSTALL) prometheus-blackbox-exporter
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
