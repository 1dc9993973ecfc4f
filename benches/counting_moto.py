#!/usr/bin/env python3
"""moto server for the benchmarks: tests/servers/moto_server.py plus request counts.

The lease table's and DescribeStream's request rates are AWS cost, and the issue asks for them
per pod. moto keeps no counts, so this wraps the tests' serialized moto application and counts
every AWS JSON request to DynamoDB and DynamoDB Streams by (client, operation, table). The client
is "relay" for the Rust SDK (its User-Agent names `aws-sdk-rust`) and for the relay's own
GetRecords (`dynamodb-nakadi-relay/<version>`), "python" for boto3, so the relay's calls are told
apart from the baseline's and the load generator's on one server. A transaction has no table of
its own; it is counted under its first item's table.

It also adds up the request units each call would be billed on an on-demand table (the cost
part prices them), by DynamoDB's published rules:
  writes  1 unit per 1 KB of the item, 2 per 1 KB for each item of a transaction. An UpdateItem
          or DeleteItem request does not carry the item, so it counts as 1 unit (an item under
          1 KB: the lease items are, and `max_item_bytes` below shows it).
  reads   per 4 KB of the items read (a Scan: of each page's items together), rounded up,
          1 unit strongly consistent, 0.5 eventually consistent, 2 in a transaction; at least
          one such unit per call. A Scan is billed for the items it examined before the filter;
          the items returned are counted, which is the same when the table holds one stream.
Item sizes follow DynamoDB's rules: names and strings in UTF-8 bytes, a number about one byte
per two digits plus one, a map or list 3 bytes plus 1 per element.

CLI: counting_moto.py [--host 127.0.0.1] [--port 0]; prints `LISTENING <port>` first.
GET /_bench/calls -> {"relay DynamoDB_20120810.UpdateItem relay-leases": n, ...}
GET /_bench/units -> {"relay DynamoDB_20120810.Scan relay-leases": {"read": r, "write": w}, ...,
                      "max_item_bytes": {"relay-leases": n}}
"""

import base64
import io
import json
import math
import sys
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "servers"))

from moto_server import is_serialized, serialized_app, serve  # noqa: E402

READ_UNIT, WRITE_UNIT = 4096, 1024


def value_bytes(v: dict) -> int:
    (kind, x), = v.items()
    if kind == "S":
        return len(x.encode())
    if kind == "N":
        return (len(x.lstrip("-").replace(".", "").strip("0")) + 1) // 2 + 1
    if kind == "B":
        return len(base64.b64decode(x))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in x)
    if kind == "NS":
        return sum(value_bytes({"N": n}) for n in x)
    if kind == "BS":
        return sum(len(base64.b64decode(b)) for b in x)
    if kind == "L":
        return 3 + sum(1 + value_bytes(e) for e in x)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_bytes(e) for k, e in x.items())
    return 0


def item_bytes(item: dict) -> int:
    return sum(len(name.encode()) + value_bytes(v) for name, v in item.items())


def write_units(size: int, transactional: bool = False) -> float:
    return max(1, math.ceil(size / WRITE_UNIT)) * (2 if transactional else 1)


def read_units(size: int, consistent: bool, transactional: bool = False) -> float:
    per = 2 if transactional else 1 if consistent else 0.5
    return max(1, math.ceil(size / READ_UNIT)) * per


def table_of(request: dict) -> str:
    if "TableName" in request:
        return request["TableName"]
    for entry in request.get("TransactItems", []):
        for op in entry.values():
            return op.get("TableName", "-")
    return "-"


def units(op: str, request: dict, response: dict) -> tuple[float, float, list]:
    """(read units, write units, sizes of the items read) of one call."""
    consistent = bool(request.get("ConsistentRead"))
    if op == "PutItem":
        return 0, write_units(item_bytes(request.get("Item", {}))), []
    if op in ("UpdateItem", "DeleteItem"):
        return 0, write_units(0), []
    if op == "TransactWriteItems":
        w = sum(write_units(item_bytes(e.get("Put", {}).get("Item", {})), True)
                for e in request.get("TransactItems", []))
        return 0, w, []
    if op == "BatchWriteItem":
        w = sum(write_units(item_bytes(r.get("PutRequest", {}).get("Item", {})))
                for rs in request.get("RequestItems", {}).values() for r in rs)
        return 0, w, []
    if op == "GetItem":
        size = item_bytes(response.get("Item", {}))
        return read_units(size, consistent), 0, [size]
    if op in ("Scan", "Query"):
        sizes = [item_bytes(i) for i in response.get("Items", [])]
        return read_units(sum(sizes), consistent), 0, sizes
    if op == "TransactGetItems":
        sizes = [item_bytes(r.get("Item", {})) for r in response.get("Responses", [])]
        return sum(read_units(s, True, True) for s in sizes), 0, sizes
    return 0, 0, []


def counting_app():
    app = serialized_app()
    calls: Counter = Counter()
    read: Counter = Counter()
    write: Counter = Counter()
    largest: Counter = Counter()
    calls_lock = threading.Lock()

    def reply(start_response, obj):
        body = json.dumps(obj).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def counted(environ, start_response):
        path = environ.get("PATH_INFO")
        if path == "/_bench/calls":
            with calls_lock:
                return reply(start_response, dict(calls))
        if path == "/_bench/units":
            with calls_lock:
                out = {k: {"read": read[k], "write": write[k]} for k in calls}
                out["max_item_bytes"] = dict(largest)
                return reply(start_response, out)
        if not is_serialized(environ):
            return app(environ, start_response)
        # The body is read here to learn the table, then handed on unchanged.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = {}
        target = environ["HTTP_X_AMZ_TARGET"]
        table = table_of(request)
        agent = environ.get("HTTP_USER_AGENT", "")
        client = "relay" if "aws-sdk-rust" in agent or "dynamodb-nakadi-relay" in agent else "python"
        key = f"{client} {target} {table}"
        with calls_lock:
            calls[key] += 1
        environ["wsgi.input"] = io.BytesIO(body)
        status = []

        def keep_status(s, headers, *rest):
            status.append(s)
            return start_response(s, headers, *rest)

        # serialized_app answers DynamoDB calls as a list, so the answer can be read here.
        out = app(environ, keep_status)
        op = target.split(".", 1)[1]
        # A failed conditional write is billed like a write; other errors (a missing table, a
        # bad request) are not, and neither are their answers read.
        billed = status and (status[0].startswith("200") or b"ConditionalCheckFailed" in b"".join(out))
        if billed and target.startswith("DynamoDB_20120810."):
            try:
                response = json.loads(b"".join(out) or b"{}") if status[0].startswith("200") else {}
            except ValueError:
                response = {}
            r, w, sizes = units(op, request, response)
            with calls_lock:
                read[key] += r
                write[key] += w
                if sizes:
                    largest[table] = max(largest[table], *sizes)
        return out

    return counted


if __name__ == "__main__":
    serve(counting_app(), __doc__.splitlines()[0])
