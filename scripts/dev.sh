#!/usr/bin/env bash
# `make dev`: builds the binaries and runs the whole pipeline locally, the functions through their
# Lambda entry points behind local stand-ins for the AWS services (see tests/src/bin/dev-stack.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --bins -p intake -p worker -p reconciler -p sync-tests
exec target/debug/dev-stack
