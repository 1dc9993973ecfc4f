#!/usr/bin/env python3
"""The seed design, as the baseline the relay is measured against.

The seed was a Python Lambda function on the table's stream: Lambda's poller reads each shard
(about four polls a second while a shard is idle), hands a batch of records to the function, which
turns every record into a Nakadi data change event with boto3's TypeDeserializer and a JSON patch
library, POSTs the batch, and sends the batch to SQS when the POST fails. This script is that
function plus a stand-in for Lambda's poller (one thread per shard, GetRecords, 250 ms sleep after
an empty poll) in one process, so its CPU and memory can be read from /proc like the relay's.

It keeps no lease table and no checkpoint (Lambda keeps those outside the function's process):
the comparison is of the per-event work and of the polling delay.

CLI: baseline.py --stream-arn ARN --nakadi-url URL --event-type NAME --dlq-url URL
                 [--data-type NAME] [--batch-size 1000]
AWS endpoints and credentials come from the environment (AWS_ENDPOINT_URL...), as for the relay.
Runs until SIGTERM; prints `READY` on stdout once every shard has an iterator.
"""

import argparse
import base64
import json
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import boto3
import jsonpatch
import requests
from boto3.dynamodb.types import TypeDeserializer

# The relay's eid namespace (src/transform/mod.rs): both sides send the same eid per record.
EID_NAMESPACE = uuid.UUID(int=0x567B5DF6_5F14_5551_95BE_61791EA4D717)
OPS = {"INSERT": "C", "MODIFY": "U", "REMOVE": "D"}
IDLE_SLEEP = 0.25

deserializer = TypeDeserializer()
stop = threading.Event()


def plain(value):
    """TypeDeserializer's Decimal, set and Binary as JSON values, as the seed function did."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, bytes):
        return base64.b64encode(value.value).decode()
    return value


def image(raw):
    return plain({k: deserializer.deserialize(v) for k, v in (raw or {}).items()})


def to_event(record, data_type):
    ddb = record["dynamodb"]
    new, old = image(ddb.get("NewImage")), image(ddb.get("OldImage"))
    created = ddb["ApproximateCreationDateTime"]
    return {
        "metadata": {
            "eid": str(uuid.uuid5(EID_NAMESPACE, record["eventID"])),
            "occurred_at": created.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if isinstance(created, datetime)
            else created,
        },
        "data_op": OPS[record["eventName"]],
        "data_type": data_type,
        "data": {"item": new if record["eventName"] != "REMOVE" else old, "patch": jsonpatch.make_patch(old, new).patch},
    }


def handle(records, args, http, sqs):
    """The seed function's body: one event per record, one POST per batch, SQS when it fails."""
    events = [to_event(r, args.data_type) for r in records]
    body = json.dumps(events)
    try:
        r = http.post(
            f"{args.nakadi_url}/event-types/{args.event_type}/events",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        ok = r.status_code == 200
    except requests.RequestException:
        ok = False
    if not ok:
        for i in range(0, len(events), 10):
            sqs.send_message_batch(
                QueueUrl=args.dlq_url,
                Entries=[{"Id": str(k), "MessageBody": json.dumps(e)} for k, e in enumerate(events[i : i + 10])],
            )


def poll_shard(shard_id, args, streams, sqs, ready):
    http = requests.Session()
    it = streams.get_shard_iterator(StreamArn=args.stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    ready.release()
    while it and not stop.is_set():
        out = streams.get_records(ShardIterator=it, Limit=args.batch_size)
        it = out.get("NextShardIterator")
        if out["Records"]:
            handle(out["Records"], args, http, sqs)
        else:
            stop.wait(IDLE_SLEEP)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream-arn", required=True)
    ap.add_argument("--nakadi-url", required=True)
    ap.add_argument("--event-type", required=True)
    ap.add_argument("--dlq-url", required=True)
    ap.add_argument("--data-type", default="payments:order")
    ap.add_argument("--batch-size", type=int, default=1000)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    streams = boto3.client("dynamodbstreams")
    shards, start = [], None
    while True:
        kw = {"ExclusiveStartShardId": start} if start else {}
        desc = streams.describe_stream(StreamArn=args.stream_arn, **kw)["StreamDescription"]
        shards += [s["ShardId"] for s in desc["Shards"]]
        start = desc.get("LastEvaluatedShardId")
        if not start:
            break
    # Clients are shared: boto3 makes them thread-safe to call, not to create side by side.
    sqs = boto3.client("sqs")
    ready = threading.Semaphore(0)
    threads = [threading.Thread(target=poll_shard, args=(s, args, streams, sqs, ready), daemon=True) for s in shards]
    for t in threads:
        t.start()
    for _ in shards:
        ready.acquire()
    print("READY", flush=True)
    stop.wait()
    for t in threads:
        t.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
