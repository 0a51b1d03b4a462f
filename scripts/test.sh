#!/usr/bin/env bash
# The whole test suite: services ready for CDC, then unit and integration tests
# against the real Postgres, MariaDB and NATS. Usage: scripts/test.sh [cargo test args…]
#
# By default the servers are the private instances scripts/services.sh owns (created on the
# first run, restarted if they were killed; needs root). With TIDEMARK_TEST_EXTERNAL=1 the
# script is not run and the tests use the servers named by the TIDEMARK_TEST_* variables
# (README: "Testing against your own servers").
set -euo pipefail
cd "$(dirname "$0")/.."
case ${TIDEMARK_TEST_EXTERNAL:-} in
    1 | true | yes) echo "TIDEMARK_TEST_EXTERNAL=$TIDEMARK_TEST_EXTERNAL: using the servers named by TIDEMARK_TEST_*" ;;
    *) bash scripts/services.sh --quiet ;;
esac
cargo build --locked --workspace --all-targets
# Unit tests of every crate, then the one integration binary (2 tests at a time: each
# test owns its databases, slots and streams).
cargo test --locked --workspace --lib --bins "$@"
cargo test --locked --test integration "$@" -- --test-threads=3
