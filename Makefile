# Runewarp — sysadmin-friendly targets.  `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
BIN := $(VENV)/bin

.PHONY: venv install uninstall demo test bench lint check clean

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

lint: venv
	$(BIN)/ruff check runewarp tests bench

check: lint
	$(BIN)/python -m pytest -q tests/proto/test_no_io.py

# A self-contained venv under $(PREFIX)/lib/runewarp, a link in $(PREFIX)/bin, example
# configs in $(SYSCONFDIR)/runewarp that never overwrite existing files.
install:
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)/lib/runewarp
	$(DESTDIR)$(PREFIX)/lib/runewarp/bin/pip install -q .
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSCONFDIR)/runewarp
	ln -sf $(PREFIX)/lib/runewarp/bin/runewarp $(DESTDIR)$(PREFIX)/bin/runewarp
	for f in conf/server.toml conf/client.toml; do \
	  test -e $(DESTDIR)$(SYSCONFDIR)/runewarp/$$(basename $$f) || \
	    install -m 0644 $$f $(DESTDIR)$(SYSCONFDIR)/runewarp/; \
	done

uninstall:
	rm -rf $(DESTDIR)$(PREFIX)/lib/runewarp $(DESTDIR)$(PREFIX)/bin/runewarp

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
