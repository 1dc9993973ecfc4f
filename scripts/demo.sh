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
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Starts a test server on a free port and prints the port it announces (`LISTENING <port>`).
start_server() {
  local name=$1; shift
  "$PY" "$@" --port 0 >"$OUT/$name.port" 2>"$OUT/$name.log" & pids+=($!)
  for _ in $(seq 300); do
    grep -q LISTENING "$OUT/$name.port" 2>/dev/null && break
    sleep 0.1
  done
  awk '/LISTENING/ {print $2; exit}' "$OUT/$name.port"
}
MOTO_PORT=$(start_server moto tests/servers/moto_server.py)
NAKADI_PORT=$(start_server nakadi tests/servers/nakadi_server.py)
[ -n "$MOTO_PORT" ] && [ -n "$NAKADI_PORT" ] || { echo "test servers did not start; see $OUT/*.log"; exit 1; }

export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT" AWS_REGION=eu-central-1 AWS_DEFAULT_REGION=eu-central-1 AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
DLQ_URL=$("$PY" - <<'PY'
import boto3
ddb = boto3.client("dynamodb")
ddb.create_table(TableName="orders", BillingMode="PAY_PER_REQUEST",
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
    StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
print(boto3.client("sqs").create_queue(QueueName="orders-relay-dlq")["QueueUrl"])
PY
)

HTTP_PORT=$(free_port)
echo "== starting the relay (logs: $OUT/relay.log, metrics: http://127.0.0.1:$HTTP_PORT/metrics)"
RELAY_TABLE_NAME=orders RELAY_LEASE_TABLE=orders-relay-leases RELAY_CREATE_LEASE_TABLE=true \
RELAY_NAKADI_URL="http://127.0.0.1:$NAKADI_PORT" RELAY_EVENT_TYPE=payments.order-changed \
RELAY_DATA_TYPE=payments:order RELAY_DLQ_URL="$DLQ_URL" RELAY_HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
RELAY_LOG_FORMAT=text "$RELAY" >"$OUT/relay.log" 2>&1 & pids+=($!)
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
import json, sys
events = json.load(sys.stdin)["events"]
for e in events:
    print(json.dumps(e, indent=2))
print(f"{len(events)} events: " + " ".join(e["data_op"] for e in events))
sys.exit(0 if [e["data_op"] for e in events] == ["C", "U", "D"] else 1)
'
echo "== relay status"
curl -fs "http://127.0.0.1:$HTTP_PORT/status"; echo
