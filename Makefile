# The two commands: `make run` (the engine on its embedded defaults) and `make test` (the suite).
CARGO ?= cargo
WASM_TARGET := wasm32-wasip2
# Every first-party plugin crate: plugins/<name>/Cargo.toml.
PLUGINS := $(patsubst plugins/%/Cargo.toml,%,$(wildcard plugins/*/Cargo.toml))
# Test plugins that misbehave on purpose: tests/plugins/<name>/Cargo.toml.
FIXTURES := $(patsubst tests/plugins/%/Cargo.toml,%,$(wildcard tests/plugins/*/Cargo.toml))
# The SDK's examples: host-api/examples/<name>/Cargo.toml.
EXAMPLES := $(patsubst host-api/examples/%/Cargo.toml,%,$(wildcard host-api/examples/*/Cargo.toml))

# componentize-py builds the Python example; kept in a virtual environment under target/.
COMPONENTIZE_PY_VERSION := 0.25.1
PYTHON_ENV := target/python
# Playwright drives Debian's chromium in the consoles' browser test; axe-core checks each page.
PLAYWRIGHT_VERSION := 1.65.3
AXE_PLAYWRIGHT_VERSION := 0.1.8
BROWSER_ENV := target/browser

.PHONY: run test lint fmt wasm-target plugins build python browser

## run: build what is needed, seed the demo tenants once and serve on SQLite at
##      http://127.0.0.1:8080 (./data/trellis.db), with the offline Alipay sandbox under /sandbox
##      (Alipay callbacks on the demo partner's domain use http://localhost:8080); merchants may use
##      custom gateways, on loopback too, so the demo merchant reaches that sandbox
run: plugins
	$(CARGO) build --bin trellis
	@# A development master key, made once and kept beside the demo database (never for production).
	@mkdir -p data && { [ -s data/dev-master-key ] || head -c 32 /dev/urandom | base64 > data/dev-master-key; }
	export TRELLIS_SECRETS__MASTER_KEY="$${TRELLIS_SECRETS__MASTER_KEY:-$$(cat data/dev-master-key)}" \
	       TRELLIS_SANDBOX__ENABLED="$${TRELLIS_SANDBOX__ENABLED:-true}" \
	       TRELLIS_THEMES__RELOAD="$${TRELLIS_THEMES__RELOAD:-true}" \
	       TRELLIS_HTTP__PUBLIC_SCHEME="$${TRELLIS_HTTP__PUBLIC_SCHEME:-http}" \
	       TRELLIS_ALIPAY__ALLOW_CUSTOM_GATEWAY="$${TRELLIS_ALIPAY__ALLOW_CUSTOM_GATEWAY:-true}" \
	       TRELLIS_ALIPAY__CUSTOM_GATEWAY_NETWORKS="$${TRELLIS_ALIPAY__CUSTOM_GATEWAY_NETWORKS:-[\"127.0.0.0/8\", \"::1\"]}"; \
	./target/debug/trellis demo seed && exec ./target/debug/trellis serve

## test: build the plugins for wasm32-wasip2 and run the whole suite
## (a second database leg runs when TRELLIS_TEST_DATABASE_URL names a PostgreSQL server)
test: plugins python browser
	@if [ -z "$$TRELLIS_TEST_DATABASE_URL" ]; then \
		echo "PostgreSQL leg skipped: set TRELLIS_TEST_DATABASE_URL=postgres://… to run it"; fi
	@# No separate `cargo build --bins`: it would resolve features without the dev-dependencies
	@# and compile the engine twice. The engine's own CLI tests make cargo build `trellis`.
	PATH="$(CURDIR)/$(PYTHON_ENV)/bin:$$PATH" $(CARGO) test --workspace

## python: componentize-py in target/python, for the Python plugin example (skipped, and its
##         test with it, when this machine has no python3)
python:
	@if [ -x $(PYTHON_ENV)/bin/componentize-py ]; then :; \
	elif command -v python3 >/dev/null 2>&1; then \
		python3 -m venv $(PYTHON_ENV) && \
		$(PYTHON_ENV)/bin/pip install -q componentize-py==$(COMPONENTIZE_PY_VERSION); \
	else echo "Python example skipped: no python3 to install componentize-py with"; fi

## browser: Playwright and axe-core in target/browser, for the consoles' browser test (skipped,
##          and that test with it, when this machine has no python3; the browser itself is
##          Debian's `chromium`, which .ci/run installs)
browser:
	@if [ -x $(BROWSER_ENV)/bin/python ] && $(BROWSER_ENV)/bin/python -c "import playwright, axe_playwright_python" 2>/dev/null; then :; \
	elif command -v python3 >/dev/null 2>&1; then \
		python3 -m venv $(BROWSER_ENV) && \
		$(BROWSER_ENV)/bin/pip install -q playwright==$(PLAYWRIGHT_VERSION) \
			axe-playwright-python==$(AXE_PLAYWRIGHT_VERSION); \
	else echo "Browser test skipped: no python3 to install Playwright with"; fi

## lint: clippy over every target, warnings are errors
lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## wasm-target: install the plugin target when this toolchain lacks it
wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx '$(WASM_TARGET)' \
		|| rustup target add $(WASM_TARGET)

## plugins: build every first-party plugin, test fixture and SDK example as a WebAssembly component
##          (into target/wasm32-wasip2/plugin/)
plugins: wasm-target
	$(CARGO) build --profile plugin --target $(WASM_TARGET) \
		$(addprefix -p trellis-plugin-,$(PLUGINS)) $(addprefix -p trellis-fixture-,$(FIXTURES)) \
		$(addprefix -p trellis-example-,$(EXAMPLES))
