# dstack-cpp: the two commands a newcomer needs are `make run` and `make test` (see README.md).
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DDSTACK_WERROR=ON

.PHONY: all deps configure build run stop test test-asan fuzz bench clean

all: build

deps:
	bash scripts/install-deps.sh

configure:
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# Main job: KMS bootstrapped in a simulated CVM deployed through the VMM, answering GetMeta.
run: deps build
	bash scripts/quickstart.sh

stop:
	bash scripts/quickstart.sh --stop

# All tests (unit, integration, interop with npm peers, ganache, Chromium, ansible).
test: deps build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# Unit tests under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan: deps
	bash scripts/test-asan.sh

fuzz: deps
	bash scripts/run-fuzz.sh

bench: deps
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS) -DDSTACK_BENCH=ON
	cmake --build $(BUILD) -j $(JOBS)

clean:
	rm -rf $(BUILD) build-asan build-fuzz
