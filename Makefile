# hv — the two quick-start commands are `make demo` (main job end to end) and `make test`.
SWIFT ?= swift
CONFIG ?= release
# Tests run optimised: model and multi-process tests are far too slow in debug builds.
SWIFT_TEST_FLAGS ?= -c release

.PHONY: deps build demo test bench clean

deps:
	./scripts/install-deps.sh

build: deps
	$(SWIFT) build -c $(CONFIG)

demo: build
	./scripts/demo.sh

test: deps
	$(SWIFT) test --disable-swift-testing $(SWIFT_TEST_FLAGS)

bench: build
	$(SWIFT) run -c release hv-bench kernels

clean:
	rm -rf .build
