#!/usr/bin/env bash
# The whole test suite: services ready for CDC, then unit and integration tests
# against the real Postgres, MariaDB and NATS. Usage: scripts/test.sh [cargo test args…]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh --quiet
cargo build --locked --workspace --all-targets
# Unit tests of every crate, then the one integration binary (2 tests at a time: each
# test owns its databases, slots and streams).
cargo test --locked --workspace --lib --bins "$@"
cargo test --locked --test integration "$@" -- --test-threads=3
