# Two entry points, each doing all set-up on a fresh machine:
#   make demo   installs sdaudit and runs the offline demo
#   make test   installs sdaudit with its test dependencies and runs the suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install install-test demo test

install:
	$(PIP) install torch==2.13.0
	$(PIP) install -e .

install-test:
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	@# headless Chromium for the explorer's browser tests (Playwright's own browser download cannot work offline)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

demo: install
	$(PYTHON) -m sdaudit demo

test: install-test
	$(PYTHON) -m pytest
