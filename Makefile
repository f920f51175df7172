# Developer tasks. `make pre` before every commit: format check, clippy, tests.
.PHONY: pre fmt clippy test demo agents bench

pre: fmt clippy test

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --release --workspace --all-targets -- -D warnings

test:
	bash scripts/test

demo:
	bash scripts/demo

agents:
	cargo run --release -q -p xtask -- build-agents

bench:
	cargo bench -p toka-benches --bench run
