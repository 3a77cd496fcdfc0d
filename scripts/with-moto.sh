#!/usr/bin/env bash
# Runs a command with a fresh moto server (the local AWS emulator) on loopback, then stops it.
# moto comes from the project's virtualenv (`make tools`), started through the project's launcher
# (tests/src/lambda_local/moto_server.py), which makes DynamoDB's conditional writes atomic as
# they are on AWS.
set -euo pipefail
PORT=${MOTO_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_EC2_METADATA_DISABLED=true
export MOTO_ENDPOINT=$AWS_ENDPOINT_URL
mkdir -p target
MOTO_BIN=$(command -v moto_server) || { echo "moto_server is not on PATH; run make tools" >&2; exit 1; }
"$(dirname "$MOTO_BIN")/python3" "$(dirname "$0")/../tests/src/lambda_local/moto_server.py" \
  -H 127.0.0.1 -p "$PORT" > target/moto.log 2>&1 &
MOTO_PID=$!
trap 'kill $MOTO_PID 2>/dev/null; wait $MOTO_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/moto-api/" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/moto-api/" || { echo "moto did not start; see target/moto.log" >&2; exit 1; }
"$@"
