# Runewarp — sysadmin-friendly targets.  `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
BIN := $(VENV)/bin

.PHONY: venv install uninstall demo test bench bench-ab lint check clean

$(BIN)/runewarp: setup.cfg pyproject.toml requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e . -r requirements-test.txt
	touch $@

venv: $(BIN)/runewarp

demo: venv
	$(BIN)/runewarp demo

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python bench/bench.py

REV ?= HEAD~1
bench-ab: venv
	$(BIN)/python bench/ab.py $(REV)

lint: venv
	$(BIN)/ruff check runewarp tests bench

check: lint
	$(BIN)/python -m pytest -q tests/proto/test_no_io.py tests/test_packaging.py

# A self-contained venv under $(PREFIX)/lib/runewarp, a link in $(PREFIX)/bin, example
# configs in $(SYSCONFDIR)/runewarp that never overwrite existing files.
# With DESTDIR (staged installs, packages) the scripts' #! lines are rewritten to the final PREFIX.
LIBDIR := $(PREFIX)/lib/runewarp
UNITDIR ?= $(PREFIX)/lib/systemd/system

install:
	$(PYTHON) -m venv $(DESTDIR)$(LIBDIR)
	$(DESTDIR)$(LIBDIR)/bin/pip install -q --disable-pip-version-check .
	if [ -n "$(DESTDIR)" ]; then \
	  grep -l '^#!$(DESTDIR)' $(DESTDIR)$(LIBDIR)/bin/* | xargs -r sed -i '1s|^#!$(DESTDIR)|#!|'; \
	fi
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSCONFDIR)/runewarp $(DESTDIR)$(UNITDIR)
	ln -sf $(LIBDIR)/bin/runewarp $(DESTDIR)$(PREFIX)/bin/runewarp
	for f in conf/server.toml conf/client.toml; do \
	  test -e $(DESTDIR)$(SYSCONFDIR)/runewarp/$$(basename $$f) || \
	    install -m 0644 $$f $(DESTDIR)$(SYSCONFDIR)/runewarp/; \
	done
	install -m 0644 conf/runewarp-server.service conf/runewarp-client.service \
	  conf/runewarp-renew-acme.service conf/runewarp-renew-acme.timer $(DESTDIR)$(UNITDIR)/

# Configs in $(SYSCONFDIR)/runewarp are operator data and stay.
uninstall:
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PREFIX)/bin/runewarp
	rm -f $(DESTDIR)$(UNITDIR)/runewarp-server.service $(DESTDIR)$(UNITDIR)/runewarp-client.service \
	  $(DESTDIR)$(UNITDIR)/runewarp-renew-acme.service $(DESTDIR)$(UNITDIR)/runewarp-renew-acme.timer

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

IMAGE ?= runewarp
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
