# Runewarp — sysadmin-friendly targets.  `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
# The demo's runtime-only venv: `pip install -e .`, no test or release tools.
VENV_RUN ?= .venv-run
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
BIN := $(VENV)/bin

.PHONY: venv venv-run install install-venv install-files install-user uninstall demo test fuzz bench \
	bench-ab lint check release-check clean ha-demo

$(BIN)/runewarp: setup.cfg pyproject.toml requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e . -r requirements-test.txt
	touch $@

venv: $(BIN)/runewarp

$(VENV_RUN)/bin/runewarp: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV_RUN)
	$(VENV_RUN)/bin/pip install -q --disable-pip-version-check -e .
	touch $@

venv-run: $(VENV_RUN)/bin/runewarp

demo: venv-run
	$(VENV_RUN)/bin/runewarp demo

# Three pytest-xdist workers per two cores (the end-to-end tests spend much of their time
# waiting on their processes); tests that share an xdist_group (timing- and
# memory-sensitive ones) run one after another on one worker (docs/testing.md).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n > 1 ? n * 3 / 2 : 1 )))
test: venv
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The long fuzz profile: 1,000,000 atheris inputs per decoder (FUZZ_RUNS); `make test`
# runs the short one (tests/fuzz/test_decoders.py).
fuzz: venv
	$(BIN)/python tests/fuzz/run.py

bench: venv
	$(BIN)/python bench/bench.py

REV ?= HEAD~1
bench-ab: venv
	$(BIN)/python bench/ab.py $(REV)

# Two Server nodes behind HAProxy, two Clients, a rollout under Visitor load, in network
# namespaces (root, iproute2, haproxy, nginx): docs/deployment.md.  HA_DEMO_ARGS=--rate 100
ha-demo: venv
	$(BIN)/python -m tools.ha_demo $(HA_DEMO_ARGS)

lint: venv
	$(BIN)/ruff check runewarp tests bench tools

check: lint
	$(BIN)/python -m pytest -q tests/test_layering.py tests/test_packaging.py

# Version, changelog heading and date, tag, image labels and image names agree (docs/release.md).
release-check:
	$(PYTHON) tools/release_check.py

# A self-contained venv under $(PREFIX)/lib/runewarp, a link in $(PREFIX)/bin, configs in
# $(SYSCONFDIR)/runewarp and a logrotate file that never overwrite existing files, units with
# this PREFIX, docs.
# DESTDIR (staged installs, packages): nothing installed names the staging folder.
LIBDIR := $(PREFIX)/lib/runewarp
UNITDIR ?= $(PREFIX)/lib/systemd/system
DOCDIR ?= $(PREFIX)/share/doc/runewarp
RUNEWARP_USER ?= runewarp
# Data folder and the service user's home.  The shipped configs and units name
# /var/lib/runewarp (the units' StateDirectory=runewarp assumes it); install rewrites them.
STATEDIR ?= /var/lib/runewarp
UNITS := runewarp-server.service runewarp-client.service \
	runewarp-renew-acme@.service runewarp-renew-acme@.timer runewarp-server.socket
SUBST = sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	-e 's|@USER@|$(RUNEWARP_USER)|g' -e 's|/var/lib/runewarp|$(STATEDIR)|g'

install: install-venv install-files install-user

install-venv:
	# The venv's python must be runnable by the service user: tools/check_python.py
	# prints --copies or fails when the build interpreter is not.
	flags=$$($(PYTHON) tools/check_python.py) || exit 1; \
	  $(PYTHON) -m venv $$flags $(DESTDIR)$(LIBDIR)
	$(DESTDIR)$(LIBDIR)/bin/pip install -q --disable-pip-version-check --no-compile .
	# Byte-compile for the final path and rewrite text files (#! lines, pyvenv.cfg, activate).
	find $(DESTDIR)$(LIBDIR) -name __pycache__ -type d -prune -exec rm -rf {} +
	$(DESTDIR)$(LIBDIR)/bin/python -m compileall -q -j 0 \
	  $(if $(DESTDIR),-s $(DESTDIR) -p /) $(DESTDIR)$(LIBDIR)/lib
	if [ -n "$(DESTDIR)" ]; then \
	  grep -rlIF -- '$(DESTDIR)' $(DESTDIR)$(LIBDIR) | xargs -r sed -i 's|$(DESTDIR)||g'; \
	  if grep -rlF -- '$(DESTDIR)' $(DESTDIR)$(LIBDIR); then \
	    echo "error: the files above still name DESTDIR $(DESTDIR)" >&2; exit 1; fi; \
	fi
	install -d $(DESTDIR)$(PREFIX)/bin
	ln -sf $(LIBDIR)/bin/runewarp $(DESTDIR)$(PREFIX)/bin/runewarp

install-files:
	install -d $(DESTDIR)$(SYSCONFDIR)/runewarp $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR)
	for f in server.toml client.toml; do \
	  $(SUBST) conf/$$f > $(DESTDIR)$(DOCDIR)/$$f.example; \
	  test -e $(DESTDIR)$(SYSCONFDIR)/runewarp/$$f || \
	    install -m 0644 $(DESTDIR)$(DOCDIR)/$$f.example $(DESTDIR)$(SYSCONFDIR)/runewarp/$$f; \
	done
	for u in $(UNITS); do $(SUBST) conf/$$u > $(DESTDIR)$(UNITDIR)/$$u; chmod 0644 $(DESTDIR)$(UNITDIR)/$$u; done
	$(SUBST) conf/runewarp.cron > $(DESTDIR)$(DOCDIR)/runewarp.cron
	# logrotate for -d: like the configs, an existing file is the operator's and stays.
	install -d $(DESTDIR)$(SYSCONFDIR)/logrotate.d
	test -e $(DESTDIR)$(SYSCONFDIR)/logrotate.d/runewarp || { \
	  $(SUBST) conf/runewarp.logrotate > $(DESTDIR)$(SYSCONFDIR)/logrotate.d/runewarp && \
	  chmod 0644 $(DESTDIR)$(SYSCONFDIR)/logrotate.d/runewarp; }
	install -m 0644 README.md CHANGELOG.md docs/*.md conf/grafana-dashboard.json \
	  conf/prometheus-alerts.yml $(DESTDIR)$(DOCDIR)/
	chmod 0644 $(DESTDIR)$(DOCDIR)/*
	for old in runewarp-renew-acme.service runewarp-renew-acme.timer; do \
	  test ! -e $(DESTDIR)$(UNITDIR)/$$old || echo "note: $(UNITDIR)/$$old is from 0.1.0;" \
	    "replace it with runewarp-renew-acme@server.timer (see CHANGELOG.md), then remove it"; \
	done

# The service user and its data folder.  Packages create users in their own scripts, so
# a staged (DESTDIR) or non-root install only creates the folder and says what it skipped.
install-user:
	@if [ -n "$(DESTDIR)" ] || [ "$$(id -u)" -ne 0 ]; then \
	  install -d -m 0750 $(DESTDIR)$(STATEDIR); \
	  echo "note: not creating user $(RUNEWARP_USER) (DESTDIR staging or not root); create it" \
	    "with: useradd --system --user-group --home-dir $(STATEDIR) --shell /usr/sbin/nologin" \
	    "$(RUNEWARP_USER) and chown $(RUNEWARP_USER): $(STATEDIR) (mode 0750)"; \
	else \
	  nologin=$$(command -v nologin || echo /usr/sbin/nologin); \
	  getent group $(RUNEWARP_USER) >/dev/null || groupadd --system $(RUNEWARP_USER) || exit 1; \
	  if ! getent passwd $(RUNEWARP_USER) >/dev/null; then \
	    useradd --system --gid $(RUNEWARP_USER) --home-dir $(STATEDIR) --no-create-home \
	      --shell $$nologin --comment "Runewarp" $(RUNEWARP_USER) || exit 1; \
	    echo "created system user $(RUNEWARP_USER)"; \
	  fi; \
	  install -d -o $(RUNEWARP_USER) -g $(RUNEWARP_USER) -m 0750 $(STATEDIR); \
	fi

# Configs in $(SYSCONFDIR)/runewarp, the data in $(STATEDIR) and the user stay: operator data.
uninstall:
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PREFIX)/bin/runewarp $(DESTDIR)$(DOCDIR)
	for u in $(UNITS) runewarp-renew-acme.service runewarp-renew-acme.timer; do \
	  rm -f $(DESTDIR)$(UNITDIR)/$$u; done

clean:
	rm -rf $(VENV) $(VENV_RUN) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# One image name everywhere (compose file, docs/release.md); tools/release_check.py compares.
IMAGE ?= runewarp/runewarp
# BASE_IMAGE=localhost/debian-python:bookworm builds on another base (default: python:3.11-slim).
BASE_IMAGE ?=
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' runewarp/__init__.py)

.PHONY: image image-export dist

image:
	docker build $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) -t $(IMAGE):$(VERSION) -t $(IMAGE):latest .

image-export: image
	mkdir -p dist
	docker save $(IMAGE):$(VERSION) | gzip > dist/runewarp-image-$(VERSION).tar.gz

dist: venv
	rm -rf dist/*.whl dist/*.tar.gz
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check dist/*
