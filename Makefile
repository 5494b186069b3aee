# nodeimg — the two entry points a new user needs. Each installs what it needs first
# (Debian packages via ci/setup; run as root on Debian 12).

CARGO ?= cargo
RECIPE ?= recipes/k8s-node.toml
NODEIMG_FLAGS ?=

.PHONY: image test e2e e2e-pxe bench setup-build setup-test clean-images

## Build the default image: OSTree commit + disk images under images/.
image: setup-build
	$(CARGO) build --release --locked -p nodeimg-builder -p nodeboot
	./target/release/nodeimg build $(RECIPE) $(NODEIMG_FLAGS)

## Run the test suite (format, lints, unit + integration tests).
test: setup-test
	ci/test

## Boot tests in qemu (slow: builds a real image, boots it under TCG).
e2e:
	ci/e2e

## PXE network install in qemu: iPXE -> installer -> disk boot (ci/e2e-pxe; slow, like e2e).
e2e-pxe:
	ci/e2e-pxe

## Benchmarks: print build, export and boot figures.
bench:
	ci/bench

setup-build:
	ci/setup build

setup-test:
	ci/setup test

clean-images:
	find images -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
