#!/usr/bin/env bash
# `make demo`: moto (DynamoDB, Streams, SQS), the Nakadi test server and the relay on loopback;
# writes an insert, an update and a delete, and shows the events arriving at Nakadi.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RELAY=target/debug/dynamodb-nakadi-relay
OUT=target/demo
mkdir -p "$OUT"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Every process the demo starts, stopped when it ends however it ends. Background processes are
# started by this shell itself, never inside $(...): a pid noted in a subshell is lost to it.
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
# Background processes of a script ignore Ctrl-C, so the signals end the script and its trap.
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts a test server on a free port; `port_of` waits for the port it announces (`LISTENING <port>`).
start_server() {
  local name=$1; shift
  # Emptied here: the redirection below truncates it only once the child runs, and `port_of`
  # must not read an earlier run's port.
  : >"$OUT/$name.port"
  "$PY" "$@" --port 0 >"$OUT/$name.port" 2>"$OUT/$name.log" & pids+=($!)
}
port_of() {
  for _ in $(seq 300); do
    grep -q LISTENING "$OUT/$1.port" 2>/dev/null && break
    sleep 0.1
  done
  awk '/LISTENING/ {print $2; exit}' "$OUT/$1.port"
}
start_server moto tests/servers/moto_server.py
start_server nakadi tests/servers/nakadi_server.py
MOTO_PORT=$(port_of moto)
NAKADI_PORT=$(port_of nakadi)
[ -n "$MOTO_PORT" ] && [ -n "$NAKADI_PORT" ] || { echo "test servers did not start; see $OUT/*.log"; exit 1; }

export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT" AWS_REGION=eu-central-1 AWS_DEFAULT_REGION=eu-central-1 AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
DLQ_URL=$("$PY" - <<'PY'
import json
import boto3
ddb = boto3.client("dynamodb")
ddb.create_table(TableName="orders", BillingMode="PAY_PER_REQUEST",
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
    StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
sqs = boto3.client("sqs")
# The parking queue, where letters wait for a human after 10 failed re-drains (docs/operating.md).
parking = sqs.create_queue(QueueName="orders-relay-parking",
    Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
parking_arn = sqs.get_queue_attributes(QueueUrl=parking,
    AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
print(sqs.create_queue(QueueName="orders-relay-dlq", Attributes={
    "MessageRetentionPeriod": "1209600", "MaximumMessageSize": "1048576",
    "RedrivePolicy": json.dumps({"deadLetterTargetArn": parking_arn, "maxReceiveCount": "10"}),
})["QueueUrl"])
PY
)

HTTP_PORT=$(free_port)
export RELAY_TABLE_NAME=orders RELAY_LEASE_TABLE=orders-relay-leases RELAY_CREATE_LEASE_TABLE=true \
  RELAY_NAKADI_URL="http://127.0.0.1:$NAKADI_PORT" RELAY_EVENT_TYPE=payments.order-changed \
  RELAY_DATA_TYPE=payments:order RELAY_DLQ_URL="$DLQ_URL" RELAY_HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
  RELAY_LOG_FORMAT=text

echo "== creating the event type in the local Nakadi, from what \`event-type\` prints"
"$RELAY" event-type --owning-application demo --key pk \
  | curl -fsS -X POST "http://127.0.0.1:$NAKADI_PORT/_test/event-types" -H 'Content-Type: application/json' --data @- >/dev/null

echo "== checking the setup before the start (dynamodb-nakadi-relay check)"
"$RELAY" check || { echo "check failed"; exit 1; }

echo "== starting the relay (logs: $OUT/relay.log, metrics: http://127.0.0.1:$HTTP_PORT/metrics)"
"$RELAY" >"$OUT/relay.log" 2>&1 & pids+=($!)
for _ in $(seq 300); do curl -fs "http://127.0.0.1:$HTTP_PORT/health/ready" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$HTTP_PORT/health/ready" >/dev/null || { echo "relay not ready; see $OUT/relay.log"; tail -20 "$OUT/relay.log"; exit 1; }

echo "== writing: insert order-42, update it, delete it"
"$PY" - <<'PY'
import boto3
ddb = boto3.client("dynamodb")
ddb.put_item(TableName="orders", Item={"pk": {"S": "order-42"}, "status": {"S": "open"},
    "amount": {"N": "1234567890.123456789012345678"}, "tags": {"SS": ["web", "eu"]}})
ddb.update_item(TableName="orders", Key={"pk": {"S": "order-42"}},
    UpdateExpression="SET #s = :s", ExpressionAttributeNames={"#s": "status"},
    ExpressionAttributeValues={":s": {"S": "paid"}})
ddb.delete_item(TableName="orders", Key={"pk": {"S": "order-42"}})
PY

echo "== events arriving at the local Nakadi (http://127.0.0.1:$NAKADI_PORT)"
for _ in $(seq 200); do
  n=$(curl -fs "http://127.0.0.1:$NAKADI_PORT/_test/events" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["count"])')
  [ "$n" -ge 3 ] && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$NAKADI_PORT/_test/events" | "$PY" -c '
import json, re, sys
# The server lists the events as the relay sent them. Numbers are shown with their text as
# sent: parsed into floats they would lose the digits the relay keeps exactly.
numbers = []
def keep(text):
    numbers.append(text)
    return "\0%d\0" % (len(numbers) - 1)
events = json.loads(sys.stdin.read(), parse_float=keep, parse_int=keep)["events"]
def show(value):
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return re.sub(r"\"\\u0000(\d+)\\u0000\"", lambda m: numbers[int(m.group(1))], text)
for e in events:
    print(show(e))
print(f"{len(events)} events: " + " ".join(e["data_op"] for e in events))
exact = "1234567890.123456789012345678" in show(events[0]["data"]["item"]) if events else False
sys.exit(0 if [e["data_op"] for e in events] == ["C", "U", "D"] and exact else 1)
'
echo "== relay status"
curl -fs "http://127.0.0.1:$HTTP_PORT/status"; echo
echo "== the stream's leases, from the lease table (dynamodb-nakadi-relay leases)"
"$RELAY" leases
