# mvp: the two commands of the README are `make run` and `make test`; both set up what is missing.
# MVP_CUDA=1 selects the CUDA build of libtorch (GPU machines).
CARGO ?= cargo
export OMP_NUM_THREADS ?= 1

.PHONY: setup build run test clean-setup

## setup: install libtorch 2.13.0 into .libtorch/ and the environment workers' Python venv
## into .venv/, both from PyPI, and the Debian packages: HDF5 for robomimic files, EGL for
## offscreen rendering (idempotent)
setup:
	@scripts/setup-debian.sh
	@scripts/setup-libtorch.sh
	@scripts/setup-venv.sh

## build: release build of the `mvp` binary
build: setup
	$(CARGO) build --release

## run: the main job: MVP offline-to-online on robomimic lift at a CPU budget (generates 50
## scripted demonstrations on first use; about 6 minutes after the build on 2 AVX2 cores), then
## prints the learning curve
run: build
	target/release/mvp train --config configs/cpu/robomimic-lift.toml

## test: every test of the workspace, release profile, one libtorch thread
test: setup
	$(CARGO) test --release --workspace

clean-setup:
	rm -rf .libtorch
