#!/usr/bin/env bash
# `make doctor`: checks a setup, read-only, and prints a table of ✓/✗ with a fix for each ✗.
# - With the deployment's environment set (SYNC_SECRET_ID, SYNC_QUEUE_URL, SYNC_TABLE,
#   GHL_LOCATION_ID, AWS credentials...), it checks that deployment and its real accounts.
# - Without it, and with `make dev` running, it checks the local stack (.dev/stack.json).
# CAPTURE=dir saves the answers it read, redacted, as contract fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --quiet -p reconciler --bin sv-reconciler
args=(--doctor)
if [ -n "${CAPTURE:-}" ]; then args+=(--capture "$CAPTURE"); fi
if [ -z "${SYNC_SECRET_ID:-}" ]; then
  state="${DEV_DIR:-.dev}/stack.json"
  if [ ! -f "$state" ]; then
    echo "doctor: set the deployment's environment (SYNC_SECRET_ID, SYNC_QUEUE_URL, SYNC_TABLE, GHL_LOCATION_ID," >&2
    echo "        AWS credentials and region), or start \`make dev\` to check the local stack" >&2
    exit 2
  fi
  # The reconciler's environment in the local stack, with the harness's credentials for moto.
  eval "$(python3 - "$state" <<'PY'
import json, shlex, sys
s = json.load(open(sys.argv[1]))
env = dict(s["functions"]["sv-reconciler"]["env"])
env.setdefault("AWS_REGION", "us-east-1")
env.update({"AWS_ENDPOINT_URL": s["aws_endpoint_url"], "AWS_ACCESS_KEY_ID": s["aws_admin"]["access_key_id"],
            "AWS_SECRET_ACCESS_KEY": s["aws_admin"]["secret_access_key"]})
for k in list(env):
    if k.startswith("AWS_LAMBDA") or k in ("AWS_SESSION_TOKEN", "_HANDLER", "LAMBDA_TASK_ROOT"):
        env.pop(k)
for k, v in env.items():
    print(f"export {k}={shlex.quote(str(v))}")
PY
)"
fi
exec target/debug/sv-reconciler "${args[@]}"
