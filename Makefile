# meetpoint — see README.md. Every target installs nothing system-wide except
# bench-deps (apt packages for the reference peers).
GO       ?= go
BIN      := bin/meetpoint
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
FUZZTIME ?= 60s
ARGS     ?=
TLS      ?=

.PHONY: build run test bench bench-full bench-deps lint fuzz release test-arm64 clean

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/meetpoint

## run: a relay on 127.0.0.1:8443 with the dummy authenticator (ARGS adds
## flags; TLS=1 serves TLS too, with a generated self-signed certificate
## whose SHA-256 fingerprint is printed)
run: build
	./$(BIN) serve --listen 127.0.0.1:8443 --auth dummy $(if $(TLS),--tls) $(ARGS)

## test: the whole suite with the race detector (well under 10 minutes)
test:
	$(GO) test -race -count=1 -timeout 8m ./...
	$(GO) test -count=1 -run 'NoAlloc' ./...   # allocation counts are only exact without -race

## bench: the quick benchmark suite (< 3 minutes); bench-full: the long one
bench: build
	./$(BIN) bench quick --out results

bench-full: build
	./$(BIN) bench full --out results --plot

bench-deps:
	apt-get update && apt-get install -y haproxy socat

## lint: gofmt, go vet and staticcheck (installed into ./bin/tools if missing)
STATICCHECK := bin/tools/staticcheck

$(STATICCHECK):
	GOBIN=$(CURDIR)/bin/tools $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint: $(STATICCHECK)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

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

clean:
	rm -rf bin dist results
