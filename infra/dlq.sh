#!/usr/bin/env bash
# Lists parked messages (with their reasons) of a deployed stack's DLQ; `redrive` moves them back.
set -euo pipefail
STACK=${1:?usage: infra/dlq.sh STACK_NAME [redrive]}
out() { aws cloudformation describe-stacks --stack-name "$STACK" --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text; }
DLQ_URL=$(out DeadLetterQueueUrl)
echo "Parked messages in $DLQ_URL (peeking: they become visible again after 30 s):"
aws sqs receive-message --queue-url "$DLQ_URL" --max-number-of-messages 10 --visibility-timeout 30 \
    --message-attribute-names All \
    --query 'Messages[].{reason: MessageAttributes.reason.StringValue, trace: MessageAttributes.ghl_trace_id.StringValue, body: Body}' \
    --output table
if [ "${2:-}" = "redrive" ]; then
  aws sqs start-message-move-task --source-arn "$(out DeadLetterQueueArn)" --destination-arn "$(out SyncQueueArn)"
  echo "Redrive started."
fi
