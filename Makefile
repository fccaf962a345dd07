# The two commands a newcomer runs: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# Debian packages the tests start for real (promtool comes with prometheus; chromium is the
# browser the page tests drive through Playwright, which never downloads one).
DEB_TOOLS := prometheus:prometheus promtool:prometheus prometheus-alertmanager:prometheus-alertmanager amtool:prometheus-alertmanager chromium:chromium
# The image (buildah builds the Dockerfile on a debootstrap base; unshare and ip run it with
# a read-only root and give shard processes their pod names)
# and the systemd units (systemd-analyze verify and security --offline).
DEB_TOOLS += buildah:buildah debootstrap:debootstrap unshare:util-linux ip:iproute2 mount:mount systemd-analyze:systemd
# The Kerberos tests' real KDC (MIT), its admin tool, the client tools and faketime (a lab
# computer with a skewed clock).
DEB_TOOLS += krb5kdc:krb5-kdc kadmin.local:krb5-admin-server kinit:krb5-user faketime:faketime
PYTEST_ARGS ?=
# Two pytest workers, one test file each at a time (a module's shared lab, image or browser
# stays in one worker): the e2e tests mostly wait on processes, the unit tests fill two
# cores. PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadfile)
# The e2e files in collection order, where the files of tests marked long come first
# (tests/conftest.py), instead of xdist's default of the files with the most tests first.
XDIST_E2E = $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)
# apt-get behind one lock, so that two makes (or two worktrees) installing at once wait for
# each other instead of failing on dpkg's lock.
APT_INSTALL = flock /tmp/.vmm-cert-exporter-apt.lock sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$$@"' apt-install

.PHONY: test demo lint typecheck unit e2e tools bench clean venv dashboard dist constraints image screenshots

test: venv tools node lint typecheck unit e2e

venv: $(STAMP)

# The product and, beside it, the lab (exporter/lab: the simulated fleet, the demo and the
# tests' helpers), both editable; only the product is ever built into a wheel or an image.
$(STAMP): pyproject.toml exporter/lab/pyproject.toml constraints.txt
	@if ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null; then \
	  echo ">> installing python3-venv"; \
	  $(APT_INSTALL) python3-venv; fi
	@# pykerberos (pywinrm[kerberos]) and gssapi have no Linux wheels: they build against MIT krb5
	@command -v krb5-config >/dev/null 2>&1 || $(APT_INSTALL) libkrb5-dev
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --constraint constraints.txt -e '.[test]' -e exporter/lab
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
	$(BIN)/pytest -m "not e2e" $(XDIST) $(PYTEST_ARGS) || [ $$? -eq 5 ]

e2e: venv tools
	$(BIN)/pytest -m e2e $(XDIST_E2E) $(PYTEST_ARGS) || [ $$? -eq 5 ]

demo: venv tools
	$(BIN)/vmm-cert-exporter demo

# Regenerate the committed Grafana dashboard from its generator (a test compares the two).
dashboard: venv
	$(BIN)/python exporter/tools/dashboard.py > grafana/dashboards/vmm-certificates.json

# The README's pictures of the landing page and the renewal desk, taken by Debian's chromium
# from the demo once its closed loop has renewed the hosts whose alerts fired.
screenshots: venv tools
	$(BIN)/python exporter/tools/screenshots.py docs/images

bench: venv tools
	$(BIN)/pip install -q -e '.[test,bench]'
	@command -v prometheus-blackbox-exporter >/dev/null 2>&1 || \
	  $(APT_INSTALL) prometheus-blackbox-exporter
	$(BIN)/python -m bench

# The exact versions this venv runs (the product's and the tests' dependencies), which the
# Dockerfile and make venv install with; rerun after changing a dependency.
constraints:
	@{ echo "# The exact versions make test runs with (make constraints writes this file from"; \
	  echo "# its venv); the Dockerfile and make venv install with it."; \
	  $(BIN)/pip freeze --all --exclude-editable | grep -v -i '^pip==' | LC_ALL=C sort -f; } > constraints.txt

# The sdist and the wheel in dist/ (python -m build, warnings fail it), checked by twine.
# PYTHONDONTWRITEBYTECODE unset: with it set, setuptools warns that it cannot byte-compile.
dist: venv
	rm -rf dist
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m build --no-isolation --outdir dist . 2>&1 | tee dist.log; \
	  status=$${PIPESTATUS[0]}; if [ $$status -ne 0 ]; then rm -f dist.log; exit $$status; fi; \
	  if grep -i -E 'warning|deprecat' dist.log; then rm -f dist.log; echo "make dist: the build warned" >&2; exit 1; fi; \
	  rm -f dist.log
	$(BIN)/twine check --strict dist/*

# The container image, built here without a Docker engine (buildah, chroot isolation, a local
# debootstrap base cached in /var/cache/vmm-cert-exporter): exporter/tools/image.py.
image: venv tools
	$(BIN)/python exporter/tools/image.py build

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
