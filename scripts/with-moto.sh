#!/usr/bin/env bash
# Runs a command with a fresh moto server (the local AWS emulator) on loopback, then stops it.
# moto comes from the project's virtualenv (`make tools`).
set -euo pipefail
PORT=${MOTO_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_EC2_METADATA_DISABLED=true
export MOTO_ENDPOINT=$AWS_ENDPOINT_URL
mkdir -p target
moto_server -H 127.0.0.1 -p "$PORT" > target/moto.log 2>&1 &
MOTO_PID=$!
trap 'kill $MOTO_PID 2>/dev/null; wait $MOTO_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/moto-api/" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/moto-api/" || { echo "moto did not start; see target/moto.log" >&2; exit 1; }
"$@"
