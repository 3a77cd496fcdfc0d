"""moto's server with IAM authorization as AWS does it for the calls this project makes.

moto checks a caller's policies once authorization is on (INITIAL_NO_AUTH_ACTION_COUNT, or
POST /moto-api/reset-auth), but only SQS names the resource a call is on; DynamoDB and Secrets
Manager calls are checked against "*", which no resource-scoped statement matches, and SQS's
batch calls are checked under their own names, which IAM does not have. This launcher:

- names the resource of DynamoDB calls (the table's ARN, from TableName or RequestItems) and of
  Secrets Manager calls (the secret's full ARN, from SecretId by name or ARN);
- authorizes SendMessageBatch, DeleteMessageBatch and ChangeMessageVisibilityBatch as
  sqs:SendMessage, sqs:DeleteMessage and sqs:ChangeMessageVisibility, as IAM does;
- appends one JSON line per authorization decision to $MOTO_IAM_AUDIT_LOG:
  {"key": access key id, "action": "sqs:SendMessage", "resource": arn, "allowed": true};
- checks `dynamodb:LeadingKeys` (a `ForAllValues:StringLike` condition, as the template writes
  it) against the partition keys a DynamoDB request names: moto ignores conditions, so a
  function reading an item its policy's condition leaves out would pass here and be refused in
  AWS; and answers a refused DynamoDB call as AWS does (JSON `AccessDeniedException`, 400), not
  with moto's XML, which the SDK cannot read;
- applies DynamoDB requests on one item one at a time (and requests on many items alone).
  DynamoDB applies a conditional write atomically, so of two racing conditional writes on one
  item at most one succeeds; moto's threaded server checks the condition and writes without a
  lock, so both could.

Without $MOTO_IAM_AUDIT_LOG and INITIAL_NO_AUTH_ACTION_COUNT, authorization stays off as in plain
moto (scripts/with-moto.sh runs it so).

Usage: python moto_server.py [moto_server arguments]
"""

import contextlib
import json
import os
import re
import sys
import threading

from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.exceptions import AccessDeniedError, JsonRESTError
from moto.dynamodb.responses import DynamoHandler
from moto.iam.access_control import IAMPolicy, IAMPolicyStatement, IAMRequestBase
from moto.secretsmanager.models import secretsmanager_backends
from moto.secretsmanager.responses import SecretsManagerResponse
from moto.server import main

IAM_ACTION = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}

AUDIT = os.environ.get("MOTO_IAM_AUDIT_LOG")
_audit_lock = threading.Lock()


def _dynamodb_resource(self):
    params = getattr(self, "params", None) or {}
    table = params.get("TableName")
    if not table:
        for key in ("RequestItems",):
            items = params.get(key) or {}
            if items:
                table = next(iter(items))
    if not table:
        return "*"
    return f"arn:aws:dynamodb:{self.region}:{self.current_account}:table/{table}"


def _secret_resource(self):
    secret_id = self._get_param("SecretId")
    if not secret_id:
        return "*"
    store = secretsmanager_backends[self.current_account][self.region].secrets
    secret = store.get(secret_id)
    return secret.arn if secret is not None else "*"


DynamoHandler._determine_resource = _dynamodb_resource
SecretsManagerResponse._determine_resource = _secret_resource

_original_init = IAMRequestBase.__init__


def _init(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    self._action = IAM_ACTION.get(self._action, self._action)


IAMRequestBase.__init__ = _init

_original_authorize = ActionAuthenticatorMixin._authenticate_and_authorize_action

# The partition keys of the DynamoDB request being authorized (None for other requests).
_request = threading.local()


def _leading_keys(self):
    """The partition key values a DynamoDB request names, or None when it names none."""
    params = getattr(self, "params", None) or {}
    action = self._get_action()

    def hash_attr(table):
        try:
            return self.dynamodb_backend.get_table(table).hash_key_attr
        except Exception:
            return None

    def value(item, attr):
        v = (item or {}).get(attr) or {}
        return next(iter(v.values()), None) if isinstance(v, dict) else None

    keys = []
    if action in _SINGLE_ITEM:
        attr = hash_attr(params.get("TableName"))
        keys.append(value(params.get("Key") or params.get("Item"), attr))
    elif action == "BatchGetItem":
        for table, ka in (params.get("RequestItems") or {}).items():
            attr = hash_attr(table)
            keys += [value(k, attr) for k in ka.get("Keys") or []]
    elif action == "BatchWriteItem":
        for table, reqs in (params.get("RequestItems") or {}).items():
            attr = hash_attr(table)
            for r in reqs:
                keys.append(value((r.get("PutRequest") or {}).get("Item") or (r.get("DeleteRequest") or {}).get("Key"), attr))
    else:
        return None
    return [str(k) for k in keys if k is not None] or None


def _like(pattern, value):
    """IAM's StringLike: `*` is any run of characters, `?` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.S) is not None


_original_check = IAMRequestBase.check_action_permitted


def _check_action_permitted(self, resource):
    _original_check(self, resource)
    keys = getattr(_request, "leading_keys", None)
    if not keys or not self._action.startswith("dynamodb:"):
        return
    # Some Allow statement for this action and resource must admit every key.
    for policy in self._access_key.collect_policies():
        statements = IAMPolicy(policy)._policy_json.get("Statement") or []
        for s in statements if isinstance(statements, list) else [statements]:
            st = IAMPolicyStatement(s)
            if s.get("Effect") != "Allow" or "Action" not in s or not st._check_element_matches("Action", self._action):
                continue
            if s.get("Resource") and not st._check_element_matches("Resource", resource):
                continue
            patterns = None
            for op, values in (s.get("Condition") or {}).items():
                if "dynamodb:LeadingKeys" in values:
                    v = values["dynamodb:LeadingKeys"]
                    patterns = (v if isinstance(v, list) else [v]) if op == "ForAllValues:StringLike" else []
            if patterns is None or all(any(_like(p, k) for p in patterns) for k in keys):
                return
    self._raise_access_denied()


IAMRequestBase.check_action_permitted = _check_action_permitted


def _authorize(self, iam_request_cls, resource="*"):
    enforced = ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT
    allowed = False
    dynamodb = isinstance(self, DynamoHandler)
    _request.leading_keys = _leading_keys(self) if dynamodb else None
    try:
        try:
            _original_authorize(self, iam_request_cls, resource)
        except AccessDeniedError as e:
            if not dynamodb:
                raise
            # DynamoDB speaks JSON: AccessDeniedException, status 400, as AWS answers it.
            denied = JsonRESTError("AccessDeniedException", e.message)
            denied.code = 400
            raise denied from None
        allowed = True
    finally:
        if enforced and AUDIT:
            auth = self.headers.get("Authorization") or ""
            key = auth.partition("Credential=")[2].partition("/")[0]
            service = auth.partition("Credential=")[2].split("/")[3] if key else ""
            action = f"{service}:{self._get_action()}"
            line = json.dumps(
                {
                    "key": key,
                    "action": IAM_ACTION.get(action, action),
                    "resource": resource,
                    "allowed": allowed,
                }
            )
            with _audit_lock, open(AUDIT, "a", encoding="utf-8") as f:
                f.write(line + "\n")


ActionAuthenticatorMixin._authenticate_and_authorize_action = _authorize

class _ItemLocks:
    """Requests on one item wait for each other; a request on many items (a batch, a query, a
    scan, a table operation) runs alone. New single-item requests wait while one is queued."""

    def __init__(self):
        self._cond = threading.Condition()
        self._items = set()
        self._whole = False
        self._whole_waiting = 0

    @contextlib.contextmanager
    def item(self, key):
        with self._cond:
            while self._whole or self._whole_waiting or key in self._items:
                self._cond.wait()
            self._items.add(key)
        try:
            yield
        finally:
            with self._cond:
                self._items.discard(key)
                self._cond.notify_all()

    @contextlib.contextmanager
    def whole(self):
        with self._cond:
            self._whole_waiting += 1
            while self._whole or self._items:
                self._cond.wait()
            self._whole_waiting -= 1
            self._whole = True
        try:
            yield
        finally:
            with self._cond:
                self._whole = False
                self._cond.notify_all()


_locks = _ItemLocks()
_SINGLE_ITEM = {"GetItem", "PutItem", "UpdateItem", "DeleteItem"}


def _item_key(self):
    """(table, key) of a single-item request; None for anything else."""
    params = getattr(self, "params", None) or {}
    if self._get_action() not in _SINGLE_ITEM:
        return None
    table = params.get("TableName")
    key = params.get("Key")
    if key is None:
        try:
            t = self.dynamodb_backend.get_table(table)
        except Exception:
            return None
        names = [t.hash_key_attr] + ([t.range_key_attr] if t.range_key_attr else [])
        key = {n: (params.get("Item") or {}).get(n) for n in names}
    return (table, json.dumps(key, sort_keys=True))


_original_call_action = DynamoHandler.call_action


def _call_action_atomically(self):
    key = _item_key(self)
    with _locks.whole() if key is None else _locks.item(key):
        return _original_call_action(self)


DynamoHandler.call_action = _call_action_atomically

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
