# mvp: the two commands of the README are `make run` and `make test`; both set up what is missing.
# MVP_CUDA=1 selects the CUDA build of libtorch (GPU machines).
CARGO ?= cargo
export OMP_NUM_THREADS ?= 1

.PHONY: setup build run test clean-setup

## setup: install libtorch 2.13.0 into .libtorch/ and the environment workers' Python venv
## into .venv/, both from PyPI (idempotent)
setup:
	@scripts/setup-libtorch.sh
	@scripts/setup-venv.sh

## build: release build of the `mvp` binary
build: setup
	$(CARGO) build --release

## run: the main job (for now offline-to-online MVP on the Rust-native task; OGBench arrives with #5/#8)
run: build
	target/release/mvp train --config configs/native-quick.toml

## test: every test of the workspace, release profile, one libtorch thread
test: setup
	$(CARGO) test --release --workspace

clean-setup:
	rm -rf .libtorch
