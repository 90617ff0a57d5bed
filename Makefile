# Qianzhi — make help lists the targets.
SHELL   := /bin/bash
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/qianzhi/qianzhi/pkg/version.Version=$(VERSION)
BIN     ?= bin
# Packages: the architecture (amd64 or arm64), where they go, and a version
# dpkg and rpm both accept and order alike, from git: v1.2 -> 1.2; 3 commits
# after it -> 1.2+git3.abc1234; v1.3-rc1 -> 1.3~rc1 (below 1.3); no tag ->
# 0.0.0~git<commits>.<sha> (below any release); .dirty when the tree has
# changes.
ARCH     ?= amd64
DIST     ?= dist
PKG_BIN  := $(BIN)/linux_$(ARCH)
RPM_ARCH := $(if $(filter arm64,$(ARCH)),aarch64,x86_64)
ifeq ($(origin PKG_VERSION),undefined)
PKG_VERSION := $(shell v=$$(git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null) && \
	echo "$$v" | sed -E 's/^v//; s/-([0-9]+)-g([0-9a-f]+)/+git\1.\2/; s/-dirty$$/.dirty/; s/-/~/g' || \
	echo "0.0.0~git$$(git rev-list --count HEAD).$$(git rev-parse --short HEAD)$$(git diff --quiet HEAD 2>/dev/null || echo .dirty)")
endif
export CGO_ENABLED = 0

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: build
build: ## build the static binaries qz-agent and qz-central into bin/
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/qz-agent ./agent/cmd/qz-agent
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/qz-central ./central/cmd/qz-central

.PHONY: test
test: build mariadb testdeps ## every test, unit and integration (real QUIC/TLS, real processes)
	$(GO) vet ./...
	QZ_REQUIRE_MARIADB=1 QZ_REQUIRE_TOOLS=1 $(GO) test -count=1 -p 1 -timeout 25m ./...

.PHONY: mariadb
mariadb: ## install MariaDB for the database tests when mariadbd is missing
	@if ! command -v mariadbd >/dev/null 2>&1 && ! test -x /usr/sbin/mariadbd; then \
		sudo=; if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo=sudo; fi; \
		set -x; \
		$$sudo apt-get update && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mariadb-server mariadb-client; \
	fi

.PHONY: testdeps
testdeps: ## install what the packaging and firewall tests use (rpm, rpm2cpio, debootstrap, nftables) when missing
	@missing=; \
	for t in rpm rpm2cpio debootstrap; do \
		command -v $$t >/dev/null 2>&1 || test -x /usr/sbin/$$t || missing="$$missing $$t"; \
	done; \
	command -v nft >/dev/null 2>&1 || test -x /usr/sbin/nft || missing="$$missing nftables"; \
	test -f /usr/share/keyrings/debian-archive-keyring.gpg || missing="$$missing debian-archive-keyring"; \
	if [ -n "$$missing" ]; then \
		sudo=; if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo=sudo; fi; \
		set -x; \
		$$sudo apt-get update && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

.PHONY: test-race
test-race: ## unit tests with -race, and the end-to-end tests on race-detector builds (needs gcc)
	CGO_ENABLED=1 $(GO) test -count=1 -race -short ./...
	QZ_E2E_RACE=1 $(GO) test -count=1 -p 1 -timeout 40m ./e2e/

.PHONY: test-unit
test-unit: ## the fast tests only (no process-level integration)
	$(GO) test -count=1 -short ./...

.PHONY: bench
bench: build mariadb ## Go benchmarks, Qianzhi against mysqldump and rsync side by side (~15 min), and query/verify calls (~2 min), written to docs/benchmarks.md
	$(GO) test -run '^$$' -bench . -benchtime 3x ./...
	set -o pipefail; QZ_BENCH=1 QZ_MARIADB_BUFFER_POOL=2G $(GO) test -count=1 -p 1 -run '^Test(Benchmarks|CallBenchmarks)$$' -timeout 40m -v ./e2e/ | grep -v '^ *{'

# make fuzz runs each target below for FUZZTIME, one after another (go test
# fuzzes one target per run). Minimising each new input is capped at
# FUZZMINIMIZETIME: Go's default of 60s stalls a run at "0/sec" for a minute
# per input found (docs/fuzzing.md).
FUZZTIME         ?= 30s
FUZZMINIMIZETIME ?= 1000x
FUZZPARALLEL     ?= 1
FUZZ_TARGETS := ./pkg/batch:FuzzVerify ./pkg/batch:FuzzRowReader \
	./pkg/receipt:FuzzReceipt ./pkg/receipt:FuzzCallReceipt ./pkg/receipt:FuzzDestruction \
	./pkg/config:FuzzParse ./pkg/config:FuzzParseSize ./connectors:FuzzCompile \
	./agent:FuzzLoadConfig ./central:FuzzLoadConfig ./central:FuzzHubRequests

.PHONY: fuzz
fuzz: ## each fuzz target for FUZZTIME (30s) on FUZZPARALLEL (1) workers; a failing input lands in the package's testdata/fuzz
	@set -o pipefail; failed=; out=$$(mktemp); trap 'rm -f "$$out"' EXIT; \
	for t in $(FUZZ_TARGETS); do \
		echo "== $${t#*:} ($${t%%:*})"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) \
			-fuzzminimizetime $(FUZZMINIMIZETIME) -parallel $(FUZZPARALLEL) $${t%%:*} 2>&1 | tee "$$out" && continue; \
		if grep -qx '    context deadline exceeded' "$$out" && ! grep -q 'Failing input written' "$$out"; then \
			echo "fuzz: $${t#*:} stopped by Go's end-of-fuzztime race (golang/go#75804), not a finding"; \
		else failed="$$failed $${t#*:}"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed (inputs in testdata/fuzz)"; exit 1; fi

.PHONY: demo
demo: build ## run a hub and two agents on loopback and move a folder between them
	./scripts/demo.sh

.PHONY: lint
lint: ## gofmt, go vet and staticcheck (pinned in go.mod)
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

.PHONY: package
package: ## .deb and .rpm of qz-agent and qz-central into dist/ (ARCH=arm64 for ARM servers)
	GOOS=linux GOARCH=$(ARCH) $(MAKE) --no-print-directory build BIN=$(PKG_BIN)
	@mkdir -p $(DIST)
	@set -e; for p in qz-agent qz-central; do \
		for f in deb:$${p}_$(PKG_VERSION)_$(ARCH).deb rpm:$$p-$(PKG_VERSION).$(RPM_ARCH).rpm; do \
			echo "$(DIST)/$${f#*:}"; \
			QZ_VERSION='$(PKG_VERSION)' QZ_ARCH='$(ARCH)' QZ_BIN='$(PKG_BIN)' \
				$(GO) tool nfpm package --config packaging/nfpm/$$p.yaml --packager $${f%%:*} --target '$(DIST)/'"$${f#*:}" >/dev/null; \
		done; \
	done

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN) $(DIST)
