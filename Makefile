# Two commands do all the set-up on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make demo   -- builds the venv, installs tinyfleet and Mosquitto, runs the end-to-end demo
#   make test   -- the same set-up, then the lint/type gate (ruff, mypy), then the test suite
#                  (Hypothesis derandomized: the same examples everywhere)
#   make fuzz   -- the property-based tests only, random and with ten times the examples (looks for new bugs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= demo-out
export TF_ENABLE_ONEDNN_OPTS := 0
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup system-deps demo lint test fuzz bench clean

setup: system-deps $(VENV)/.installed

# Debian/Ubuntu packages the tool and its tests use: Mosquitto (broker), espeak-ng (keyword audio),
# Noto fonts (handwritten-character glyphs), python3-venv (Debian's python3 lacks venv without it),
# chromium + chromium-driver (the dashboard's browser test drives headless Chromium with Selenium),
# and the C device side: gcc + libmosquitto-dev (tf-agent), clang + libclang-rt-dev (libFuzzer,
# ASan/UBSan), gcc-arm-none-eabi + libnewlib-arm-none-eabi (Cortex-M4 builds), qemu-system-arm
# (one SGD step on mps2-an386). Installed only when missing; needs root or sudo.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto mosquitto-clients"; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	command -v make >/dev/null 2>&1 || missing="$$missing make"; \
	[ -f /usr/include/mosquitto.h ] || missing="$$missing libmosquitto-dev"; \
	command -v clang >/dev/null 2>&1 || missing="$$missing clang"; \
	[ -n "$$(find /usr/lib/llvm-*/lib/clang -name 'libclang_rt.fuzzer-x86_64.a' 2>/dev/null | head -n 1)" ] || missing="$$missing libclang-rt-dev"; \
	command -v arm-none-eabi-gcc >/dev/null 2>&1 || missing="$$missing gcc-arm-none-eabi"; \
	[ -d /usr/lib/arm-none-eabi/newlib ] || missing="$$missing libnewlib-arm-none-eabi"; \
	command -v qemu-system-arm >/dev/null 2>&1 || missing="$$missing qemu-system-arm"; \
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

# The gate CI runs before the tests: any ruff finding or mypy error fails `make test`.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/python -m pytest -q

# Random exploration for longer (tests/conftest.py, profile "fuzz"): failures are kept in .hypothesis/
# and replayed first on the next `make fuzz`; a bug found here gets a fixed regression test.
FUZZ_TESTS ?= tests/system/test_fuzz_inputs.py tests/devices/test_sparse.py tests/registry/test_values.py
fuzz: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --hypothesis-profile=fuzz --hypothesis-show-statistics $(FUZZ_TESTS)

bench: setup
	$(BIN)/python -m benchmarks.models

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .hypothesis .mypy_cache .ruff_cache
