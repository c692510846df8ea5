# dicombox: build, run and test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv peers lint bench image image-test clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if ! $(PYTHON) -m venv --help >/dev/null 2>&1 || ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	  echo "installing python3-venv"; \
	  $$( [ "$$(id -u)" -ne 0 ] && echo sudo ) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" -ne 0 ] && echo sudo ) apt-get install -y -qq python3-venv >/dev/null; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

## Run every service in the foreground on the embedded default configuration.
run: $(STAMP)
	$(BIN)/dicombox --config embedded serve all

peers:
	scripts/install-peers.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

## Install what the tests need (venv, real peers) and run the test suite.
test: $(STAMP) peers lint
	$(BIN)/pytest -q

bench: $(STAMP) peers
	$(BIN)/python -m bench

## Appliance images (image-build/README.md); `peers` brings the host tools.
IMAGE_OUT ?= image-build/out

## The Raspberry Pi 3/4 SD card image: $(IMAGE_OUT)/dicombox-rpi.img
image: $(STAMP) peers
	image-build/build.sh --board rpi --out $(IMAGE_OUT)

## Build the amd64 test image and boot it twice under QEMU; fails unless its self-test passes.
image-test: $(STAMP) peers
	image-build/build.sh --board pc --test --out $(IMAGE_OUT)/test
	image-build/boot-test.sh $(IMAGE_OUT)/test

clean:
	rm -rf $(VENV) var build dist *.egg-info
