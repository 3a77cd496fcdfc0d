#!/usr/bin/env bash
# `make admin ARGS="tenant list"`: runs sv-admin (README, "Many locations").
# - With SYNC_TABLE set (and AWS credentials and region), against that deployment.
# - Without it, and with `make dev` running, against the local stack (.dev/stack.json), with the
#   stack's admin keys for moto.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --quiet -p admin --bin sv-admin
if [ -z "${SYNC_TABLE:-}" ]; then
  state="${DEV_DIR:-.dev}/stack.json"
  if [ ! -f "$state" ]; then
    echo "sv-admin: set SYNC_TABLE (the stack's StateTableName), SYNC_QUEUE_URL, TENANT_SECRET_PREFIX and AWS" >&2
    echo "          credentials, or start \`make dev\` to manage the local stack's tenants" >&2
    exit 2
  fi
  eval "$(python3 - "$state" <<'PY'
import json, shlex, sys
s = json.load(open(sys.argv[1]))
env = {"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": s["aws_endpoint_url"],
       "AWS_ACCESS_KEY_ID": s["aws_admin"]["access_key_id"],
       "AWS_SECRET_ACCESS_KEY": s["aws_admin"]["secret_access_key"],
       "SYNC_TABLE": s["table"], "SYNC_QUEUE_URL": s["queue_url"],
       "TENANT_SECRET_PREFIX": s["tenant_secret_prefix"]}
for k, v in env.items():
    print(f"export {k}={shlex.quote(v)}")
PY
)"
fi
exec target/debug/sv-admin "$@"
