# Dockyard's two entry points: `make run` and `make test`, both as root on a
# fresh Debian machine. Each installs what is missing first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := runc busybox-static iproute2

.PHONY: run test setup debian-packages venv check pytest bench-peers

run: setup
	$(BIN)/dockyard import-busybox
	exec $(BIN)/dockyard daemon

test: setup check pytest

setup: debian-packages venv

debian-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

check:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict actors messages

pytest:
	$(BIN)/pytest

# The peer that bench/side_by_side.py compares with: Debian's dockerd 20.10
# (docker.io), plus matplotlib for the bench plots. Debian's package starts
# dockerd and containerd on install, so a policy-rc.d that denies every
# service start (exit status 101) is in place during the install, and the
# services are disabled afterwards, because the bench starts its own
# dockerd. The package's docker CLI goes to /usr/bin/docker, and this target
# fails if that changes the docker first on PATH, which the tests use.
BENCH_PEER_PACKAGES := docker.io
POLICY_RC_D := /usr/sbin/policy-rc.d

bench-peers: setup
	$(BIN)/pip install -q -e '.[dev,bench]'
	@cli_before="$$(command -v docker || true)"; \
	if ! command -v dockerd >/dev/null; then \
	  echo "installing Debian packages: $(BENCH_PEER_PACKAGES)"; \
	  if [ -e $(POLICY_RC_D) ]; then mv $(POLICY_RC_D) $(POLICY_RC_D).bench-peers; fi; \
	  printf '#!/bin/sh\nexit 101\n' > $(POLICY_RC_D); chmod 755 $(POLICY_RC_D); \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(BENCH_PEER_PACKAGES); status=$$?; \
	  rm -f $(POLICY_RC_D); \
	  if [ -e $(POLICY_RC_D).bench-peers ]; then mv $(POLICY_RC_D).bench-peers $(POLICY_RC_D); fi; \
	  [ $$status -eq 0 ] || exit $$status; \
	fi; \
	if [ -d /run/systemd/system ]; then \
	  systemctl disable --now docker.socket docker.service containerd.service || true; \
	else \
	  for service in docker containerd; do \
	    if [ -x /etc/init.d/$$service ]; then update-rc.d $$service disable >/dev/null 2>&1 || true; fi; \
	  done; \
	fi; \
	cli_after="$$(command -v docker || true)"; \
	if [ "$$cli_before" != "$$cli_after" ]; then \
	  echo "the docker CLI on PATH changed from '$$cli_before' to '$$cli_after'" >&2; exit 1; \
	fi; \
	echo "dockerd: $$(dockerd --version)"; echo "docker CLI on PATH: $$cli_after"
