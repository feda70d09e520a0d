# meetpoint — see README.md. Every target installs nothing system-wide except
# bench-deps and interop (apt packages for the reference peers; interop only
# when they are missing).
GO       ?= go
BIN      := bin/meetpoint
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
FUZZTIME ?= 60s
ARGS     ?=
TLS      ?=

.PHONY: build run test fleet-chaos test-under-load interop interop-disco babble-demo bench bench-full bench-deps syscalls allocs floor lint fuzz tls-soak release test-arm64 fleet-demo clean

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/meetpoint

## run: a relay on 127.0.0.1:8443 with the dummy authenticator, and a
## 2-minute --alone-timeout so a human has time to start the second client
## (ARGS adds or overrides flags, --listen included; TLS=1 serves TLS too,
## with a self-signed certificate whose SHA-256 fingerprint is printed).
## State (the groups API's groups, that certificate) is kept in ./data/;
## TURN answers on UDP at the same port (credentials: GET /v1/turn/credentials).
run: build
	./$(BIN) serve --auth dummy --alone-timeout 2m --data-dir data --turn $(if $(TLS),--tls) $(ARGS)

## test: the whole suite with the race detector (about 5 minutes), ending
## with one line per group of skipped tests and why (scripts/gotest)
test:
	@command -v $(or $(CC),cc) >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || \
		{ echo "make test: -race needs cgo and a C compiler; install one (e.g. apt-get install gcc)" >&2; exit 1; }
	$(GO) test -count=1 -run 'NoAlloc' ./...   # allocation counts are only exact without -race
	$(GO) test -count=1 ./relay/loop/   # its raw read and write (raw_norace.go) are built only without -race
	$(GO) run ./scripts/gotest -race -count=1 -timeout 8m ./...

## fleet-chaos: the fleet's faults with traffic flowing (a node's mesh
## cut, a node killed, a node restarted, a node with another mesh key,
## Redis restarted empty, a Sentinel failover, a Redis Cluster master
## killed, a node killed behind HAProxy) on three loopback nodes, and a
## mesh cut between node processes in network namespaces (root); prints
## the table of docs/fleet.md (about a minute and a half)
fleet-chaos:
	MEETPOINT_CHAOS=1 $(GO) test -p 1 -count=1 -run '^TestFleetChaos(Netns)?$$' -v ./relay/fleet/ ./cmd/meetpoint/

## test-under-load: make test while stress-ng keeps 4 CPU hogs running,
## RUNS times in a row (default 1); installs stress-ng if missing
RUNS ?= 1
test-under-load:
	scripts/test-under-load.sh $(RUNS)

## interop: nymea-remoteproxy 1.8.4's and 1.13.0's real clients and
## nymea's own QtTest suites against meetpoint and against nymea's own
## servers (docs/interop.md). Builds the peers and their suites from
## ../shared/peers once into ~/.cache/meetpoint-interop (tens of minutes on
## 2 cores; installs Qt 5 with apt-get if missing), then runs in about 4
## minutes. ARGS: e.g. -only tp/ -suites=false
interop:
	scripts/interop.sh $(ARGS)

## interop-disco: Disco's own client, Babble's WAMP client and two of
## Babble's WebRTC transports (through TURN, relay-only) against meetpoint
## and against Disco's own server (docs/discovery.md). Unpacks Disco from
## ../shared/peers into ~/.cache/meetpoint-disco; its own Go module in
## interop/disco; a network namespace with loopback only (unshare). ARGS:
## go test flags, e.g. ARGS=-test.run=TestSetGroup
interop-disco:
	ARGS='$(ARGS)' scripts/interop-disco.sh

## babble-demo: two real Babble nodes (built from the module proxy) in
## network namespaces reach consensus through meetpoint as their signalling
## and TURN server, relayed only (docs/discovery.md); needs root
babble-demo:
	scripts/babble-demo.sh

## bench: the quick benchmark suite (< 3 minutes); bench-full: the long one
bench: build
	./$(BIN) bench quick --out results

bench-full: build
	./$(BIN) bench full --out results --plot

bench-deps:
	apt-get update && apt-get install -y haproxy socat

## syscalls: the relay's system calls per tunnel on the set-up path, TCP
## and WebSocket (strace -c; docs/BENCHMARKS.md "Set-up floor")
syscalls: build
	scripts/syscalls-per-tunnel.sh tcp
	scripts/syscalls-per-tunnel.sh ws

## allocs: the relay's heap objects and bytes per tunnel on the set-up path,
## TCP and WebSocket (its /metrics; docs/BENCHMARKS.md "Allocations per tunnel")
allocs: build
	scripts/allocs-per-tunnel.sh tcp
	scripts/allocs-per-tunnel.sh ws

## floor: issue 28's figures beside their goals (bench setup, latency and
## TEXT/BINARY throughput three times, syscalls per tunnel), docs/BENCHMARKS.md
## "Set-up floor"; ARGS: bench flags, e.g. ARGS="--client-cpus 0-7 --peer-cpus 8-9"
floor: build
	scripts/setup-floor.sh $(ARGS)

## tls-soak: 1 GiB each way, checksummed, between crypto/tls and the own
## TLS 1.3 record layer, re-keying every 64 records (make test runs the
## same test with 16 MiB); SOAK=bytes changes the size
SOAK ?= 1073741824
tls-soak:
	MEETPOINT_TLS_SOAK_BYTES=$(SOAK) $(GO) test -count=1 -v -run '^TestOwnRecordsSoak$$' -timeout 30m ./relay/loop/

## lint: gofmt, go vet, staticcheck and govulncheck (installed into ./bin/tools if missing;
## govulncheck is skipped, saying so, when its database (vuln.go.dev) cannot be reached)
STATICCHECK := bin/tools/staticcheck
GOVULNCHECK := bin/tools/govulncheck

$(STATICCHECK):
	GOBIN=$(CURDIR)/bin/tools $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2

$(GOVULNCHECK):
	GOBIN=$(CURDIR)/bin/tools $(GO) install golang.org/x/vuln/cmd/govulncheck@v1.9.0

lint: $(STATICCHECK) $(GOVULNCHECK)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...
	@out=$$($(GOVULNCHECK) ./... 2>&1); rc=$$?; \
	if [ $$rc -ne 0 ] && echo "$$out" | grep -q 'fetching vulnerabilities'; then \
	  echo "govulncheck skipped: its database cannot be reached from here ($$(echo "$$out" | grep -m1 'fetching vulnerabilities'))"; \
	else echo "$$out"; exit $$rc; fi

## fuzz: every fuzz target for FUZZTIME each (default 60s)
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

release:
	VERSION=$(VERSION) ./scripts/release.sh

test-arm64:
	./scripts/test-arm64.sh

## fleet-demo: redis-server + 3 nodes + HAProxy (TCP, round-robin) and two
## clients pairing through it (docs/fleet.md); needs redis-server, haproxy
fleet-demo: build
	./scripts/fleet-demo.sh

clean:
	rm -rf bin dist results
