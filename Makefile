# Two commands do all the set-up on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make demo   -- builds the venv, installs tinyfleet and Mosquitto, runs the end-to-end demo
#   make test   -- the same set-up, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= demo-out
export TF_ENABLE_ONEDNN_OPTS := 0
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup system-deps demo test bench clean

setup: system-deps $(VENV)/.installed

# Debian/Ubuntu packages the tool and its tests use: Mosquitto (broker), espeak-ng (keyword audio),
# Noto fonts (handwritten-character glyphs), python3-venv (Debian's python3 lacks venv without it),
# chromium + chromium-driver (the dashboard's browser test drives headless Chromium with Selenium).
# Installed only when missing; needs root or sudo.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto mosquitto-clients"; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	[ -d /usr/share/fonts/truetype/noto ] || missing="$$missing fonts-noto-core"; \
	$(PYTHON) -c "import ensurepip, venv" >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || [ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/tinyfleet demo --out $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks.models

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
