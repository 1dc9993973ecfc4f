#!/usr/bin/env python3
"""Self-test of the DynamoDB Streams fault server, over HTTP.

    python3 tests/servers/test_streams_fault_server.py [--bench] [-k NAME]

Starts streams_fault_server.py as a subprocess (as the integration tests do)
and checks every feature with plain urllib. Then it makes one more pass with
boto3's `dynamodbstreams` client from the repository's .venv: botocore parses
the protocol from the same service model the Rust SDK is generated from, so
that pass shows real SDK parsing and error mapping accept what the server
sends. A missing .venv/boto3 is a failure, not a skip (pass --no-boto3 to
leave that pass out on purpose).

--bench also measures GetRecords throughput with bigger volumes.
Prints `N passed, M failed`; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVER = HERE / "streams_fault_server.py"
VENV_PY = HERE.parents[1] / ".venv" / "bin" / "python"
TARGET = "DynamoDBStreams_20120810."
JSON_10 = "application/x-amz-json-1.0"
NS = "com.amazonaws.dynamodb.v20120810#"


# --------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------

class ServerProcess:
    """The server as a subprocess on a free port, as integration tests run it."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", "0"],
            stdout=subprocess.PIPE, stderr=None, text=True)
        line = self.proc.stdout.readline()  # blocks until it has bound
        m = re.fullmatch(r"LISTENING (\d+)\n", line)
        if not m:
            self.stop()
            raise RuntimeError(f"server did not announce its port: {line!r}")
        self.port = int(m.group(1))
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


BASE = ""  # set in main()


def api(op: str, body: dict | None = None, raw: bytes | None = None, target: str | None = None):
    """One DynamoDB Streams call -> (status, parsed JSON body, headers)."""
    data = raw if raw is not None else json.dumps(body or {}).encode()
    req = urllib.request.Request(BASE + "/", data=data, method="POST", headers={
        "X-Amz-Target": target if target is not None else TARGET + op,
        "Content-Type": JSON_10,
    })
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def ok(op: str, body: dict | None = None) -> dict:
    status, out, _ = api(op, body)
    assert status == 200, f"{op} -> {status} {out}"
    return out


def err(op: str, body: dict, code: str, status: int = 400) -> dict:
    st, out, headers = api(op, body)
    assert st == status, f"{op} expected {status} {code}, got {st} {out}"
    assert headers["Content-Type"] == JSON_10, headers["Content-Type"]
    assert set(out) == {"__type", "message"}, out
    assert out["__type"].rsplit("#", 1)[1] == code, out
    assert out["message"], out
    return out


def ctl(path: str, body: dict | None = None, method: str = "POST", expect: int = 200) -> dict:
    data = json.dumps(body or {}).encode() if method == "POST" else None
    req = urllib.request.Request(BASE + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, out = r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        status, out = e.code, json.loads(e.read())
    assert status == expect, f"{path} -> {status} {out}"
    return out


def new_stream(**kw) -> str:
    kw.setdefault("table", "orders")
    return ctl("/_test/streams", kw)["stream_arn"]


def post(arn: str, records: list) -> list:
    return ctl("/_test/records", {"stream_arn": arn, "records": records})["records"]


def shards(arn: str, **kw) -> list:
    out, start = [], None
    while True:
        body = {"StreamArn": arn, **kw}
        if start:
            body["ExclusiveStartShardId"] = start
        d = ok("DescribeStream", body)["StreamDescription"]
        out += d["Shards"]
        start = d.get("LastEvaluatedShardId")
        if not start:
            return out


def iterator(arn: str, shard_id: str, kind: str = "TRIM_HORIZON", seq: str | None = None) -> str:
    body = {"StreamArn": arn, "ShardId": shard_id, "ShardIteratorType": kind}
    if seq is not None:
        body["SequenceNumber"] = seq
    return ok("GetShardIterator", body)["ShardIterator"]


def read_all(it: str, limit: int = 1000) -> tuple[list, dict]:
    """Read until the shard ends or a page comes back empty -> (records, last response)."""
    recs = []
    while True:
        out = ok("GetRecords", {"ShardIterator": it, "Limit": limit})
        recs += out["Records"]
        if "NextShardIterator" not in out or not out["Records"]:
            return recs, out
        it = out["NextShardIterator"]


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


IMAGE = {
    "pk": {"S": "order-1"},
    "amount": {"N": "12345678901234567890.123456789012345678"},
    "tiny": {"N": "1E-130"},
    "ok": {"BOOL": True},
    "nothing": {"NULL": True},
    "blob": {"B": base64.b64encode(b"\x00\xffbytes").decode()},
    "tags": {"SS": ["b", "a"]},
    "nums": {"NS": ["2", "1.0"]},
    "nested": {"M": {"a/b~c": {"L": [{"S": "x"}, {"N": "-0"}, {"M": {}}]}}},
    "unicode": {"S": "Zürich \u2603 \"quoted\""},
}


# --------------------------------------------------------------------------
# Protocol and operations
# --------------------------------------------------------------------------

@test
def protocol_headers():
    arn = new_stream()
    status, out, h = api("DescribeStream", {"StreamArn": arn})
    assert status == 200
    assert h["Content-Type"] == JSON_10
    assert int(h["Content-Length"]) > 0
    assert h["x-amzn-RequestId"]
    d = out["StreamDescription"]
    assert d["StreamArn"] == arn and d["StreamStatus"] == "ENABLED"
    assert d["StreamViewType"] == "NEW_AND_OLD_IMAGES" and d["TableName"] == "orders"
    assert d["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert isinstance(d["CreationRequestDateTime"], (int, float))
    assert abs(d["CreationRequestDateTime"] - time.time()) < 60
    assert re.fullmatch(r"arn:aws:dynamodb:eu-central-1:123456789012:table/orders/stream/"
                        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", arn), arn
    assert arn.endswith("/stream/" + d["StreamLabel"])
    (s,) = d["Shards"]
    assert re.fullmatch(r"shardId-\d{20}-[0-9a-f]{8}", s["ShardId"]), s
    assert "ParentShardId" not in s and "EndingSequenceNumber" not in s["SequenceNumberRange"]
    assert "LastEvaluatedShardId" not in d


@test
def list_streams_filter_and_paging():
    ctl("/_test/reset")
    a = [new_stream(table="alpha") for _ in range(3)]
    b = new_stream(table="beta")
    assert len(set(a)) == 3, "stream ARNs (labels) must be unique"
    got = ok("ListStreams", {"TableName": "alpha"})
    assert sorted(s["StreamArn"] for s in got["Streams"]) == sorted(a)
    assert all(s["TableName"] == "alpha" and s["StreamLabel"] for s in got["Streams"])
    assert "LastEvaluatedStreamArn" not in got
    seen, start = [], None
    while True:
        body = {"Limit": 1}
        if start:
            body["ExclusiveStartStreamArn"] = start
        page = ok("ListStreams", body)
        assert len(page["Streams"]) <= 1
        seen += [s["StreamArn"] for s in page["Streams"]]
        start = page.get("LastEvaluatedStreamArn")
        if not start:
            break
    assert sorted(seen) == sorted(a + [b]), seen
    err("ListStreams", {"Limit": 101}, "ValidationException")


@test
def describe_stream_paging():
    arn = new_stream(shards=5, describe_page_size=2)
    ids = [s["shard_id"] for s in ctl(f"/_test/shards?stream_arn={urllib.parse.quote(arn)}",
                                      method="GET")["shards"]]
    pages, start = [], None
    while True:
        body = {"StreamArn": arn}
        if start:
            body["ExclusiveStartShardId"] = start
        d = ok("DescribeStream", body)["StreamDescription"]
        pages.append([s["ShardId"] for s in d["Shards"]])
        start = d.get("LastEvaluatedShardId")
        if start:
            assert start == pages[-1][-1]
        else:
            break
    assert [len(p) for p in pages] == [2, 2, 1], pages
    assert sum(pages, []) == ids
    # A smaller Limit wins over the page size.
    d = ok("DescribeStream", {"StreamArn": arn, "Limit": 1})["StreamDescription"]
    assert len(d["Shards"]) == 1 and d["LastEvaluatedShardId"] == ids[0]
    # A larger one does not.
    d = ok("DescribeStream", {"StreamArn": arn, "Limit": 100})["StreamDescription"]
    assert len(d["Shards"]) == 2
    err("DescribeStream", {"StreamArn": arn, "Limit": 0}, "ValidationException")
    err("DescribeStream", {"StreamArn": arn, "Limit": 101}, "ValidationException")
    # Default page size is 100.
    big = new_stream(shards=120)
    d = ok("DescribeStream", {"StreamArn": big})["StreamDescription"]
    assert len(d["Shards"]) == 100 and d["LastEvaluatedShardId"]
    assert len(shards(big)) == 120


@test
def record_wire_format():
    arn = new_stream()
    before = time.time()
    (r,) = post(arn, [{"key": "order-1", "event_name": "MODIFY", "keys": {"pk": {"S": "order-1"}},
                       "new_image": IMAGE, "old_image": {"pk": {"S": "order-1"}}}])
    after = time.time()
    assert re.fullmatch(r"[0-9a-f]{32}", r["event_id"])
    recs, last = read_all(iterator(arn, r["shard_id"]))
    assert "NextShardIterator" in last, "an open shard always has a next iterator"
    (rec,) = recs
    assert list(rec) == ["eventID", "eventName", "eventVersion", "eventSource", "awsRegion",
                         "dynamodb"], list(rec)
    assert rec["eventID"] == r["event_id"] and rec["eventName"] == "MODIFY"
    assert rec["eventVersion"] == "1.1" and rec["eventSource"] == "aws:dynamodb"
    assert rec["awsRegion"] == "eu-central-1"
    d = rec["dynamodb"]
    t = d["ApproximateCreationDateTime"]
    assert isinstance(t, float) and before - 0.001 <= t <= after + 0.001, (before, t, after)
    assert d["Keys"] == {"pk": {"S": "order-1"}}
    assert d["NewImage"] == IMAGE, "images pass through verbatim"
    assert d["OldImage"] == {"pk": {"S": "order-1"}}
    assert d["SequenceNumber"] == r["sequence_number"]
    assert isinstance(d["SizeBytes"], int) and d["SizeBytes"] > 0
    assert d["StreamViewType"] == "NEW_AND_OLD_IMAGES"


@test
def numbers_pass_through_as_strings_exactly():
    # The wire bytes, not only the parsed value, must carry the digits sent.
    arn = new_stream()
    (r,) = post(arn, [{"key": "k", "new_image": {"n": {"N": "0.10000000000000000000000000000000000001"}}}])
    it = iterator(arn, r["shard_id"])
    req = urllib.request.Request(BASE + "/", data=json.dumps({"ShardIterator": it}).encode(),
                                 headers={"X-Amz-Target": TARGET + "GetRecords", "Content-Type": JSON_10})
    raw = urllib.request.urlopen(req).read()
    assert b'"N":"0.10000000000000000000000000000000000001"' in raw, raw


@test
def event_name_defaults_ttl_delete_and_view_types():
    arn = new_stream()
    rs = post(arn, [
        {"key": "a", "new_image": {"pk": {"S": "a"}}},
        {"key": "a", "new_image": {"pk": {"S": "a"}, "v": {"N": "2"}}, "old_image": {"pk": {"S": "a"}}},
        {"key": "a", "old_image": {"pk": {"S": "a"}}, "ttl_delete": True},
    ])
    recs, _ = read_all(iterator(arn, rs[0]["shard_id"]))
    assert [r["eventName"] for r in recs] == ["INSERT", "MODIFY", "REMOVE"]
    assert "OldImage" not in recs[0]["dynamodb"] and "NewImage" not in recs[2]["dynamodb"]
    assert "userIdentity" not in recs[0]
    # Member names of the service model's Identity shape (what SDKs parse).
    assert recs[2]["userIdentity"] == {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}
    assert recs[0]["dynamodb"]["Keys"] == {"pk": {"S": "a"}}, "keys default to the hash key"
    for vt, has_new, has_old in (("KEYS_ONLY", False, False), ("NEW_IMAGE", True, False),
                                 ("OLD_IMAGE", False, True)):
        s = new_stream(view_type=vt)
        (r,) = post(s, [{"key": "b", "new_image": {"x": {"S": "n"}}, "old_image": {"x": {"S": "o"}}}])
        (rec,) = read_all(iterator(s, r["shard_id"]))[0]
        assert rec["dynamodb"]["StreamViewType"] == vt
        assert ("NewImage" in rec["dynamodb"]) == has_new and ("OldImage" in rec["dynamodb"]) == has_old
        assert ok("DescribeStream", {"StreamArn": s})["StreamDescription"]["StreamViewType"] == vt


@test
def sequence_numbers():
    arn = new_stream(shards=3)
    rs = post(arn, [{"key": f"k{i}", "new_image": {}} for i in range(30)])
    seqs = [r["sequence_number"] for r in rs]
    assert all(s.isdigit() and len(s) >= 21 for s in seqs), seqs
    ints = [int(s) for s in seqs]
    assert ints == sorted(ints) and len(set(ints)) == 30, "strictly increasing across the stream"
    assert any(b - a > 1 for a, b in zip(ints, ints[1:])), "not contiguous"
    assert {len(s) for s in seqs} == {21, 22} or len({len(s) for s in seqs}) > 1, \
        "lengths vary (string comparison of sequence numbers must not work)"
    for sh in shards(arn):
        start = int(sh["SequenceNumberRange"]["StartingSequenceNumber"])
        mine = [int(r["sequence_number"]) for r in rs if r["shard_id"] == sh["ShardId"]]
        assert all(start < s for s in mine)


@test
def routing_is_stable_per_key():
    arn = new_stream(shards=4)
    rs = post(arn, [{"key": f"key-{i % 20}", "new_image": {}} for i in range(200)])
    by_key = {}
    for i, r in enumerate(rs):
        by_key.setdefault(f"key-{i % 20}", set()).add(r["shard_id"])
    assert all(len(v) == 1 for v in by_key.values()), by_key
    assert len({next(iter(v)) for v in by_key.values()}) > 1, "keys spread over shards"
    # explicit shard_id wins
    target = shards(arn)[3]["ShardId"]
    assert {r["shard_id"] for r in post(arn, [{"key": "x", "shard_id": target}] * 3)} == {target}
    ctl("/_test/records", {"stream_arn": arn, "records": [{"key": "x", "shard_id": "shardId-nope"}]},
        expect=404)


@test
def get_records_paging_and_limits():
    arn = new_stream()
    rs = post(arn, [{"key": "k", "new_image": {"i": {"N": str(i)}}} for i in range(7)])
    it = iterator(arn, rs[0]["shard_id"])
    sizes = []
    got = []
    for _ in range(4):
        out = ok("GetRecords", {"ShardIterator": it, "Limit": 3})
        sizes.append(len(out["Records"]))
        got += out["Records"]
        it = out["NextShardIterator"]
    assert sizes == [3, 3, 1, 0], sizes
    assert [r["dynamodb"]["SequenceNumber"] for r in got] == [r["sequence_number"] for r in rs]
    # The iterator of an empty page keeps working once new records arrive.
    post(arn, [{"key": "k", "new_image": {}}])
    assert len(ok("GetRecords", {"ShardIterator": it})["Records"]) == 1
    err("GetRecords", {"ShardIterator": it, "Limit": 0}, "ValidationException")
    err("GetRecords", {"ShardIterator": it, "Limit": 1001}, "LimitExceededException")


@test
def get_records_byte_cap():
    arn = new_stream(max_page_bytes=3000)
    big = {"pk": {"S": "k"}, "pad": {"S": "x" * 1000}}
    rs = post(arn, [{"key": "k", "new_image": big} for _ in range(10)])
    out = ok("GetRecords", {"ShardIterator": iterator(arn, rs[0]["shard_id"])})
    assert 1 <= len(out["Records"]) < 10, len(out["Records"])
    huge = new_stream(max_page_bytes=100)
    (r,) = post(huge, [{"key": "k", "new_image": big}])
    out = ok("GetRecords", {"ShardIterator": iterator(huge, r["shard_id"])})
    assert len(out["Records"]) == 1, "a record larger than the cap still comes alone"
    # Default cap: 1 MB.
    dflt = new_stream()
    rs = post(dflt, [{"key": "k", "new_image": {"pad": {"S": "x" * 4000}}} for _ in range(400)])
    out = ok("GetRecords", {"ShardIterator": iterator(dflt, rs[0]["shard_id"])})
    assert 200 < len(out["Records"]) < 400, len(out["Records"])


@test
def iterator_types():
    arn = new_stream()
    rs = post(arn, [{"key": "k", "new_image": {"i": {"N": str(i)}}} for i in range(5)])
    sid = rs[0]["shard_id"]
    seq = [r["sequence_number"] for r in rs]

    def first(kind, s=None):
        recs = ok("GetRecords", {"ShardIterator": iterator(arn, sid, kind, s)})["Records"]
        return [r["dynamodb"]["SequenceNumber"] for r in recs]

    assert first("TRIM_HORIZON") == seq
    assert first("AT_SEQUENCE_NUMBER", seq[2]) == seq[2:]
    assert first("AFTER_SEQUENCE_NUMBER", seq[2]) == seq[3:]
    assert first("AFTER_SEQUENCE_NUMBER", seq[4]) == []
    latest = iterator(arn, sid, "LATEST")
    assert ok("GetRecords", {"ShardIterator": latest})["Records"] == []
    (new,) = post(arn, [{"key": "k", "new_image": {}}])
    recs = ok("GetRecords", {"ShardIterator": latest})["Records"]
    assert [r["dynamodb"]["SequenceNumber"] for r in recs] == [new["sequence_number"]]
    gsi = {"StreamArn": arn, "ShardId": sid}
    err("GetShardIterator", {**gsi, "ShardIteratorType": "AT_SEQUENCE_NUMBER"}, "ValidationException")
    err("GetShardIterator", {**gsi, "ShardIteratorType": "AT_SEQUENCE_NUMBER",
                             "SequenceNumber": "12"}, "ValidationException")
    err("GetShardIterator", {**gsi, "ShardIteratorType": "AT_SEQUENCE_NUMBER",
                             "SequenceNumber": "TRIM_HORIZON"}, "ValidationException")
    err("GetShardIterator", {**gsi, "ShardIteratorType": "SOMEWHERE"}, "ValidationException")
    err("GetShardIterator", {"StreamArn": arn, "ShardIteratorType": "LATEST"}, "ValidationException")


@test
def at_timestamp():
    arn = new_stream()
    (a,) = post(arn, [{"key": "k", "new_image": {}, "approximate_creation_time": 1000.0}])
    (b,) = post(arn, [{"key": "k", "new_image": {}, "approximate_creation_time": 2000.5}])
    body = {"StreamArn": arn, "ShardId": a["shard_id"], "ShardIteratorType": "AT_TIMESTAMP"}
    it = ok("GetShardIterator", {**body, "Timestamp": 1500})["ShardIterator"]
    recs = ok("GetRecords", {"ShardIterator": it})["Records"]
    assert [r["dynamodb"]["SequenceNumber"] for r in recs] == [b["sequence_number"]]
    assert recs[0]["dynamodb"]["ApproximateCreationDateTime"] == 2000.5
    err("GetShardIterator", {**body, "Timestamp": time.time() + 3600}, "ValidationException")


@test
def split_and_lineage():
    arn = new_stream(shards=1)
    (parent,) = [s["ShardId"] for s in shards(arn)]
    before = post(arn, [{"key": f"k{i % 5}", "new_image": {"v": {"N": str(i)}}} for i in range(10)])
    it_parent = iterator(arn, parent)
    children = ctl("/_test/split", {"stream_arn": arn, "shard_id": parent, "children": 2})["children"]
    assert len(children) == 2
    desc = {s["ShardId"]: s for s in shards(arn)}
    p = desc[parent]
    assert p["SequenceNumberRange"]["EndingSequenceNumber"] == before[-1]["sequence_number"]
    for c in children:
        assert desc[c]["ParentShardId"] == parent
        assert "EndingSequenceNumber" not in desc[c]["SequenceNumberRange"]
        assert int(desc[c]["SequenceNumberRange"]["StartingSequenceNumber"]) > \
            int(p["SequenceNumberRange"]["EndingSequenceNumber"])
    assert list(desc) == [parent] + children, "parents are listed before children"
    # ShardFilter CHILD_SHARDS returns only that shard's children.
    d = ok("DescribeStream", {"StreamArn": arn, "ShardFilter": {"Type": "CHILD_SHARDS",
                                                                 "ShardId": parent}})
    assert [s["ShardId"] for s in d["StreamDescription"]["Shards"]] == children
    d = ok("DescribeStream", {"StreamArn": arn, "ShardFilter": {"Type": "CHILD_SHARDS",
                                                                 "ShardId": children[0]}})
    assert d["StreamDescription"]["Shards"] == []
    # Each key moves to exactly one child; per-key order parent -> child.
    after = post(arn, [{"key": f"k{i % 5}", "new_image": {"v": {"N": str(10 + i)}}} for i in range(10)])
    assert {r["shard_id"] for r in after} <= set(children)
    for k in range(5):
        assert len({r["shard_id"] for i, r in enumerate(after) if i % 5 == k}) == 1
    # Reading the closed parent: the response carrying the last records has no
    # NextShardIterator.
    out = ok("GetRecords", {"ShardIterator": it_parent, "Limit": 6})
    assert len(out["Records"]) == 6 and "NextShardIterator" in out
    out = ok("GetRecords", {"ShardIterator": out["NextShardIterator"], "Limit": 6})
    assert len(out["Records"]) == 4 and "NextShardIterator" not in out, out.keys()
    # Exactly at the end: empty and no next iterator.
    out = ok("GetRecords", {"ShardIterator": iterator(arn, parent, "AFTER_SEQUENCE_NUMBER",
                                                      before[-1]["sequence_number"])})
    assert out == {"Records": []}, out
    out = ok("GetRecords", {"ShardIterator": iterator(arn, parent, "LATEST")})
    assert out == {"Records": []}, out
    # Sequence numbers beyond a closed shard's range are invalid.
    err("GetShardIterator", {"StreamArn": arn, "ShardId": parent, "ShardIteratorType": "AT_SEQUENCE_NUMBER",
                             "SequenceNumber": after[-1]["sequence_number"]}, "ValidationException")
    # Records cannot go to a closed shard; a closed shard cannot split again.
    ctl("/_test/records", {"stream_arn": arn, "records": [{"key": "z", "shard_id": parent}]}, expect=400)
    ctl("/_test/split", {"stream_arn": arn, "shard_id": parent}, expect=400)
    # Splitting an empty shard still gives it an EndingSequenceNumber.
    empty = next(c for c in children if not any(r["shard_id"] == c for r in after)) \
        if len({r["shard_id"] for r in after}) < 2 else None
    if empty is None:
        s2 = new_stream()
        (e,) = [s["ShardId"] for s in shards(s2)]
        ctl("/_test/split", {"stream_arn": s2, "shard_id": e})
        rng = {s["ShardId"]: s for s in shards(s2)}[e]["SequenceNumberRange"]
    else:
        ctl("/_test/split", {"stream_arn": arn, "shard_id": empty})
        rng = {s["ShardId"]: s for s in shards(arn)}[empty]["SequenceNumberRange"]
    assert int(rng["EndingSequenceNumber"]) > int(rng["StartingSequenceNumber"])
    assert ok("GetRecords", {"ShardIterator": iterator(arn if empty else s2, empty or e)}) == {"Records": []}


@test
def rewound_split_breaks_the_parent_child_order():
    arn = new_stream(shards=1)
    (parent,) = [s["ShardId"] for s in shards(arn)]
    before = post(arn, [{"key": f"k{i}", "new_image": {}} for i in range(4)])
    with_children = ctl("/_test/split", {"stream_arn": arn, "shard_id": parent, "children": 2})
    (normal_parent,) = with_children["children"][:1]
    # A rewound split numbers its children's records below their parent's last.
    post(arn, [{"key": "k", "new_image": {}, "shard_id": normal_parent}])
    kids = ctl("/_test/split", {"stream_arn": arn, "shard_id": normal_parent, "children": 2,
                                "rewind": True})["children"]
    desc = {s["ShardId"]: s for s in shards(arn)}
    p_rng = desc[normal_parent]["SequenceNumberRange"]
    for c in kids:
        assert desc[c]["SequenceNumberRange"]["StartingSequenceNumber"] == p_rng["StartingSequenceNumber"]
    after = post(arn, [{"key": k, "new_image": {}, "shard_id": c} for c in kids for k in ("a", "b")])
    seqs = [int(r["sequence_number"]) for r in after]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4, "still increasing, across the siblings"
    assert seqs[0] <= int(p_rng["EndingSequenceNumber"]), (seqs, p_rng)
    # Each child still reads and iterates by its own numbers.
    for c in kids:
        recs, _ = read_all(iterator(arn, c))
        mine = [r["sequence_number"] for r in after if r["shard_id"] == c]
        assert [r["dynamodb"]["SequenceNumber"] for r in recs] == mine
        recs, _ = read_all(iterator(arn, c, "AFTER_SEQUENCE_NUMBER", mine[0]))
        assert [r["dynamodb"]["SequenceNumber"] for r in recs] == mine[1:]
    # A normal split's children go on with the stream's numbers.
    (sibling,) = with_children["children"][1:]
    (r,) = post(arn, [{"key": "z", "new_image": {}, "shard_id": sibling}])
    assert int(r["sequence_number"]) > int(p_rng["EndingSequenceNumber"])
    ctl("/_test/split", {"stream_arn": arn, "shard_id": sibling, "rewind": "yes"}, expect=400)


@test
def remove_aged_out_shard():
    arn = new_stream()
    (parent,) = [s["ShardId"] for s in shards(arn)]
    (r,) = post(arn, [{"key": "k", "new_image": {}}])
    it = iterator(arn, parent)
    ctl("/_test/remove-shard", {"stream_arn": arn, "shard_id": parent}, expect=400)  # still open
    (child,) = ctl("/_test/split", {"stream_arn": arn, "shard_id": parent, "children": 1})["children"]
    ctl("/_test/remove-shard", {"stream_arn": arn, "shard_id": parent})
    desc = shards(arn)
    assert [s["ShardId"] for s in desc] == [child] and desc[0]["ParentShardId"] == parent
    err("GetShardIterator", {"StreamArn": arn, "ShardId": parent, "ShardIteratorType": "TRIM_HORIZON"},
        "ResourceNotFoundException")
    err("GetRecords", {"ShardIterator": it}, "ResourceNotFoundException")


@test
def split_all_rollover():
    arn = new_stream(shards=3)
    first = [s["ShardId"] for s in shards(arn)]
    out = ctl("/_test/split-all", {"stream_arn": arn})
    assert sorted(out["splits"]) == sorted(first)
    assert all(len(v) == 1 for v in out["splits"].values()), "a rollover: one child each"
    out2 = ctl("/_test/split-all", {"stream_arn": arn, "children": 2})
    assert len(out2["children"]) == 6
    state = ctl(f"/_test/shards?stream_arn={urllib.parse.quote(arn)}", method="GET")["shards"]
    assert len(state) == 12 and sum(s["open"] for s in state) == 6
    desc = shards(arn)
    assert len(desc) == 12
    parents = {s["ShardId"]: s.get("ParentShardId") for s in desc}
    for c in out2["children"]:
        assert parents[parents[c]] in first


@test
def expire_iterators():
    arn = new_stream()
    (r,) = post(arn, [{"key": "k", "new_image": {}}])
    it = iterator(arn, r["shard_id"])
    nxt = ok("GetRecords", {"ShardIterator": it})["NextShardIterator"]
    ctl("/_test/expire-iterators", {"stream_arn": arn})
    e = err("GetRecords", {"ShardIterator": it}, "ExpiredIteratorException")
    assert e["__type"] == NS + "ExpiredIteratorException"
    err("GetRecords", {"ShardIterator": nxt}, "ExpiredIteratorException")
    fresh = iterator(arn, r["shard_id"], "AT_SEQUENCE_NUMBER", r["sequence_number"])
    assert len(ok("GetRecords", {"ShardIterator": fresh})["Records"]) == 1
    # Other streams' iterators are untouched.
    other = new_stream()
    (o,) = post(other, [{"key": "k", "new_image": {}}])
    oit = iterator(other, o["shard_id"])
    ctl("/_test/expire-iterators", {"stream_arn": arn})
    ok("GetRecords", {"ShardIterator": oit})


@test
def iterator_ttl():
    arn = new_stream(iterator_ttl_seconds=0.5)
    (r,) = post(arn, [{"key": "k", "new_image": {}}])
    it = iterator(arn, r["shard_id"])
    nxt = ok("GetRecords", {"ShardIterator": it})["NextShardIterator"]
    time.sleep(0.7)
    err("GetRecords", {"ShardIterator": it}, "ExpiredIteratorException")
    err("GetRecords", {"ShardIterator": nxt}, "ExpiredIteratorException")


@test
def trimming():
    arn = new_stream()
    rs = post(arn, [{"key": "k", "new_image": {"i": {"N": str(i)}}} for i in range(10)])
    sid, seq = rs[0]["shard_id"], [r["sequence_number"] for r in rs]
    old_it = iterator(arn, sid)
    out = ctl("/_test/trim", {"stream_arn": arn, "shard_id": sid, "count": 3})
    assert out == {"trimmed": 3, "trim_horizon": seq[3]}, out
    e = err("GetRecords", {"ShardIterator": old_it}, "TrimmedDataAccessException")
    assert e["__type"] == NS + "TrimmedDataAccessException"
    err("GetShardIterator", {"StreamArn": arn, "ShardId": sid, "ShardIteratorType": "AT_SEQUENCE_NUMBER",
                             "SequenceNumber": seq[2]}, "TrimmedDataAccessException")
    err("GetShardIterator", {"StreamArn": arn, "ShardId": sid, "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                             "SequenceNumber": seq[1]}, "TrimmedDataAccessException")
    # AFTER the last trimmed record loses nothing: allowed.
    recs, _ = read_all(iterator(arn, sid, "AFTER_SEQUENCE_NUMBER", seq[2]))
    assert [r["dynamodb"]["SequenceNumber"] for r in recs] == seq[3:]
    recs, _ = read_all(iterator(arn, sid, "TRIM_HORIZON"))
    assert [r["dynamodb"]["SequenceNumber"] for r in recs] == seq[3:]
    # An iterator already past the trim point keeps working.
    mid = iterator(arn, sid, "AT_SEQUENCE_NUMBER", seq[6])
    out = ctl("/_test/trim", {"stream_arn": arn, "shard_id": sid, "before_sequence_number": seq[5]})
    assert out["trimmed"] == 5
    assert len(ok("GetRecords", {"ShardIterator": mid})["Records"]) == 4
    # Trimming never moves back.
    assert ctl("/_test/trim", {"stream_arn": arn, "shard_id": sid, "count": 1})["trimmed"] == 5
    # Everything trimmed: TRIM_HORIZON reads nothing, at the end of the shard.
    ctl("/_test/trim", {"stream_arn": arn, "shard_id": sid, "count": 10})
    assert ok("GetRecords", {"ShardIterator": iterator(arn, sid)})["Records"] == []


@test
def throttling_and_internal_errors():
    arn = new_stream()
    (r,) = post(arn, [{"key": "k", "new_image": {}}])
    it = iterator(arn, r["shard_id"])
    ctl("/_test/throttle", {"operation": "GetRecords", "times": 2, "error": "LimitExceededException"})
    err("GetRecords", {"ShardIterator": it}, "LimitExceededException")
    err("GetRecords", {"ShardIterator": it}, "LimitExceededException")
    ok("GetRecords", {"ShardIterator": it})
    ctl("/_test/throttle", {"operation": "DescribeStream", "times": 1, "error": "InternalServerError"})
    e = err("DescribeStream", {"StreamArn": arn}, "InternalServerError", status=500)
    assert e["__type"] == NS + "InternalServerError"
    ok("DescribeStream", {"StreamArn": arn})
    # Faults queue in order; times 0 clears.
    ctl("/_test/throttle", {"operation": "GetShardIterator", "times": 1, "error": "InternalServerError"})
    ctl("/_test/throttle", {"operation": "GetShardIterator", "times": 1, "error": "ResourceNotFoundException"})
    err("GetShardIterator", {"StreamArn": arn, "ShardId": r["shard_id"], "ShardIteratorType": "LATEST"},
        "InternalServerError", 500)
    err("GetShardIterator", {"StreamArn": arn, "ShardId": r["shard_id"], "ShardIteratorType": "LATEST"},
        "ResourceNotFoundException")
    ctl("/_test/throttle", {"operation": "ListStreams", "times": 5})
    ctl("/_test/throttle", {"operation": "ListStreams", "times": 0})
    ok("ListStreams")
    ctl("/_test/throttle", {"operation": "Nope"}, expect=400)


@test
def latency():
    arn = new_stream()
    ctl("/_test/latency", {"operation": "DescribeStream", "seconds": 0.5, "times": 1})
    started = time.monotonic()
    # Another operation is not held up by the late answer.
    done = threading.Event()
    slow = threading.Thread(target=lambda: (ok("DescribeStream", {"StreamArn": arn}), done.set()))
    slow.start()
    ok("ListStreams")
    assert not done.is_set(), "ListStreams waited for the delayed DescribeStream"
    slow.join()
    assert time.monotonic() - started >= 0.5
    quick = time.monotonic()
    ok("DescribeStream", {"StreamArn": arn})
    assert time.monotonic() - quick < 0.4, "only `times` answers are late"
    ctl("/_test/latency", {"operation": "DescribeStream", "seconds": 5, "times": 3})
    ctl("/_test/latency", {"operation": "DescribeStream", "times": 0})
    quick = time.monotonic()
    ok("DescribeStream", {"StreamArn": arn})
    assert time.monotonic() - quick < 0.4, "times 0 clears"
    ctl("/_test/latency", {"operation": "Nope"}, expect=400)
    ctl("/_test/latency", {"operation": "GetRecords", "seconds": -1}, expect=400)


@test
def call_counts():
    arn = new_stream()
    ctl("/_test/reset-calls")
    c = ctl("/_test/calls", method="GET")
    assert c == {"DescribeStream": 0, "GetShardIterator": 0, "GetRecords": 0, "ListStreams": 0}, c
    for _ in range(3):
        ok("DescribeStream", {"StreamArn": arn})
    ok("ListStreams")
    api("DescribeStream", {"StreamArn": "arn:nope"})  # failed calls count too
    c = ctl("/_test/calls", method="GET")
    assert c["DescribeStream"] == 4 and c["ListStreams"] == 1 and c["GetRecords"] == 0, c


@test
def error_shapes():
    arn = new_stream()
    sid = shards(arn)[0]["ShardId"]
    missing = arn.replace("orders", "missing")
    e = err("DescribeStream", {"StreamArn": missing}, "ResourceNotFoundException")
    assert e["__type"] == NS + "ResourceNotFoundException"
    err("GetShardIterator", {"StreamArn": missing, "ShardId": sid, "ShardIteratorType": "LATEST"},
        "ResourceNotFoundException")
    err("GetShardIterator", {"StreamArn": arn, "ShardId": "shardId-00000000000000000000-00000000",
                             "ShardIteratorType": "LATEST"}, "ResourceNotFoundException")
    err("DescribeStream", {}, "ValidationException")
    err("GetRecords", {}, "ValidationException")
    err("GetRecords", {"ShardIterator": "not-an-iterator"}, "ValidationException")
    st, out, _ = api("DescribeStream", raw=b"{not json")
    assert st == 400 and out["__type"].endswith("#SerializationException"), out
    st, out, _ = api("", {}, target="DynamoDBStreams_20120810.PutRecord")
    assert st == 400 and out["__type"].endswith("#UnknownOperationException"), out
    st, out, _ = api("", {}, target="")
    assert st == 400 and out["__type"].endswith("#UnknownOperationException"), out
    ctl("/_test/nope", expect=404)
    ctl("/_test/records", {"stream_arn": "arn:nope", "records": []}, expect=404)


@test
def generate_fills_open_shards():
    arn = new_stream(shards=2)
    tpl = {"event_name": "MODIFY", "keys": {"pk": {"S": "order-{n}"}},
           "new_image": {"pk": {"S": "order-{n}"}, "n": {"N": "{n}"}, "pad": {"S": "y" * 500}},
           "old_image": {"pk": {"S": "order-{n}"}}}
    out = ctl("/_test/generate", {"stream_arn": arn, "records_per_shard": 2500, "record": tpl})
    assert out["records"] == 5000 and set(out["shards"].values()) == {2500}
    keys, ids, all_seqs = set(), set(), []
    for sid in out["shards"]:
        recs, last = read_all(iterator(arn, sid))
        assert len(recs) == 2500 and "NextShardIterator" in last
        seqs = [int(r["dynamodb"]["SequenceNumber"]) for r in recs]
        assert seqs == sorted(seqs) and len(set(seqs)) == 2500
        all_seqs += seqs
        for r in recs:
            d = r["dynamodb"]
            n = d["NewImage"]["n"]["N"]
            assert d["Keys"] == {"pk": {"S": f"order-{n}"}} == {"pk": d["NewImage"]["pk"]}
            assert r["eventName"] == "MODIFY" and re.fullmatch(r"[0-9a-f]{32}", r["eventID"])
            keys.add(n)
            ids.add(r["eventID"])
    assert len(keys) == 5000 and len(ids) == 5000 and len(set(all_seqs)) == 5000
    # Posted records after generated ones continue the sequence.
    (p,) = post(arn, [{"key": "late", "new_image": {}}])
    assert int(p["sequence_number"]) > max(all_seqs)
    # Generated records can be split, trimmed and read across like posted ones.
    sid = next(iter(out["shards"]))
    ctl("/_test/trim", {"stream_arn": arn, "shard_id": sid, "count": 100})
    recs, _ = read_all(iterator(arn, sid))
    assert len(recs) >= 2400


@test
def keep_alive_concurrency():
    arn = new_stream(shards=4)
    ctl("/_test/generate", {"stream_arn": arn, "records_per_shard": 500,
                            "record": {"keys": {"pk": {"S": "k{n}"}}, "new_image": {"v": {"S": "x"}}}})
    ids = [s["ShardId"] for s in shards(arn)]
    errors, totals = [], []

    def worker(sid):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", int(BASE.rsplit(":", 1)[1]), timeout=30)
            hdr = {"Content-Type": JSON_10}

            def call(op, body):
                conn.request("POST", "/", json.dumps(body), {**hdr, "X-Amz-Target": TARGET + op})
                resp = conn.getresponse()
                data = resp.read()
                assert resp.status == 200 and not resp.will_close, (resp.status, data[:200])
                return json.loads(data)

            sock = None
            it = call("GetShardIterator", {"StreamArn": arn, "ShardId": sid,
                                           "ShardIteratorType": "TRIM_HORIZON"})["ShardIterator"]
            sock = conn.sock
            n = 0
            for _ in range(60):
                out = call("GetRecords", {"ShardIterator": it, "Limit": 10})
                n += len(out["Records"])
                it = out["NextShardIterator"]
            assert conn.sock is sock, "the connection was reused"
            totals.append(n)
            conn.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(sid,)) for sid in ids * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert totals == [500] * 8, totals


def measure_throughput(records_per_shard: int, shards_n: int, readers: int) -> float:
    """records/s of GetRecords with Limit 1000 over keep-alive connections,
    records of ~1 KB (SizeBytes 1,043; ~1.3 KB of JSON each)."""
    arn = new_stream(shards=shards_n)
    tpl = {"event_name": "MODIFY", "keys": {"pk": {"S": "order-{n}"}},
           "new_image": {"pk": {"S": "order-{n}"}, "status": {"S": "PAID"},
                         "amount": {"N": "123.45"}, "payload": {"S": "p" * 830}},
           "old_image": {"pk": {"S": "order-{n}"}, "status": {"S": "NEW"}, "amount": {"N": "123.45"}}}
    ctl("/_test/generate", {"stream_arn": arn, "records_per_shard": records_per_shard, "record": tpl})
    ids = [s["ShardId"] for s in shards(arn)]
    port = int(BASE.rsplit(":", 1)[1])
    counts, pages = [], []

    def reader(my_ids):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        n = 0
        for sid in my_ids:
            conn.request("POST", "/", json.dumps({"StreamArn": arn, "ShardId": sid,
                                                  "ShardIteratorType": "TRIM_HORIZON"}),
                         {"X-Amz-Target": TARGET + "GetShardIterator", "Content-Type": JSON_10})
            it = json.loads(conn.getresponse().read())["ShardIterator"]
            while True:
                conn.request("POST", "/", json.dumps({"ShardIterator": it, "Limit": 1000}),
                             {"X-Amz-Target": TARGET + "GetRecords", "Content-Type": JSON_10})
                data = conn.getresponse().read()
                # Parsing 1.3 MB of JSON per page would measure the client,
                # not the server: the first page is parsed and checked, the
                # rest are counted and the next iterator is cut out.
                if not pages:
                    out = json.loads(data)
                    assert len(out["Records"]) == data.count(b'"eventID"') == 1000
                got = data.count(b'"eventID"')
                if not got:
                    break
                n += got
                pages.append(got)
                i = data.rindex(b'"NextShardIterator":"') + len('"NextShardIterator":"')
                it = data[i:data.index(b'"', i)].decode()
        counts.append(n)
        conn.close()

    groups = [ids[i::readers] for i in range(readers)]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=reader, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    total = sum(counts)
    assert total == records_per_shard * shards_n, (total, counts)
    assert max(pages) == 1000, "1,000-record pages (SizeBytes total under 1 MB)"
    return total / dt


@test
def throughput_floor():
    # A floor that holds on a loaded CI machine, not a benchmark (--bench).
    rate = measure_throughput(20000, 1, 1)
    print(f"    GetRecords: {rate:,.0f} records/s (1 reader, 1,000-record pages of ~1 KB)")
    assert rate > 5000, rate


@test
def small_calls_are_not_delayed():
    # Headers and body are separate writes: without TCP_NODELAY, Nagle and
    # delayed ACKs add ~40 ms to each keep-alive response.
    arn = new_stream()
    conn = http.client.HTTPConnection("127.0.0.1", int(BASE.rsplit(":", 1)[1]), timeout=30)
    t0 = time.perf_counter()
    for _ in range(50):
        conn.request("POST", "/", json.dumps({"StreamArn": arn}),
                     {"X-Amz-Target": TARGET + "DescribeStream", "Content-Type": JSON_10})
        assert conn.getresponse().read()
    per_call = (time.perf_counter() - t0) / 50
    conn.close()
    assert per_call < 0.02, f"{per_call * 1000:.1f} ms per DescribeStream"


# --------------------------------------------------------------------------
# Lifecycle: a compressed day (rollovers, splits, retention, aging out)
# --------------------------------------------------------------------------

def report(arn: str) -> dict:
    return ctl(f"/_test/lifecycle-report?stream_arn={urllib.parse.quote(arn)}", method="GET")


def wait_for(what: str, fn, timeout: float = 10.0):
    """Poll fn() until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def lifecycle(arn: str, **kw) -> dict:
    return ctl("/_test/lifecycle", {"stream_arn": arn, **kw})


@test
def lifecycle_control_validation():
    arn = new_stream()
    for bad in ({"rollover_every": -1}, {"rollover_every": "1"}, {"retention": True},
                {}, {"rollover_every": 0, "retention": None},
                {"rollover_every": 1, "split_at": "2"}, {"rollover_every": 1, "split_at": [0]},
                {"rollover_every": 1, "split_at": [1.5]}, {"retention": 1, "split_at": [1]}):
        ctl("/_test/lifecycle", {"stream_arn": arn, **bad}, expect=400)
    ctl("/_test/lifecycle", {"stream_arn": arn + "x", "retention": 1}, expect=404)
    ctl(f"/_test/lifecycle-report?stream_arn={urllib.parse.quote(arn + 'x')}", method="GET", expect=404)
    assert lifecycle(arn, stop=True) == {"running": False, "started_at": None}, "stop when idle is fine"
    r = report(arn)
    assert r["running"] is False and r["rollovers"] == 0 and r["splits"] == 0 and r["error"] is None
    assert r["removed"] == [] and r["trimmed_unserved"] == [] and r["trimmed_unserved_count"] == 0
    assert [s["parent_shard_id"] for s in r["shards"]] == [None] and r["shards"][0]["open"]
    # Existing endpoints are unchanged by the new bookkeeping.
    st = ctl(f"/_test/shards?stream_arn={urllib.parse.quote(arn)}", method="GET")["shards"]
    assert set(st[0]) == {"shard_id", "parent_shard_id", "open", "records", "trimmed",
                          "starting_sequence_number", "ending_sequence_number",
                          "last_sequence_number"}, st


@test
def lifecycle_report_counts_manual_trim_and_remove():
    # Without a lifecycle: /_test/trim and /_test/remove-shard feed the report.
    arn = new_stream()
    (sid,) = [s["ShardId"] for s in shards(arn)]
    rs = post(arn, [{"key": "k", "new_image": {"i": {"N": str(i)}}} for i in range(6)])
    out = ok("GetRecords", {"ShardIterator": iterator(arn, sid), "Limit": 2})
    assert len(out["Records"]) == 2
    # Served records trimmed are no loss; rs[2] is.
    ctl("/_test/trim", {"stream_arn": arn, "shard_id": sid, "count": 3})
    r = report(arn)
    assert [(x["shard_id"], x["sequence_number"], x["event_id"], x["reason"])
            for x in r["trimmed_unserved"]] == [(sid, rs[2]["sequence_number"], rs[2]["event_id"], "trim")]
    assert r["shards"][0]["served"] == 2 and r["shards"][0]["trimmed"] == 3
    # Reading the same records again counts them once; a read further on adds.
    ok("GetRecords", {"ShardIterator": iterator(arn, sid, "AT_SEQUENCE_NUMBER", rs[5]["sequence_number"])})
    ok("GetRecords", {"ShardIterator": iterator(arn, sid, "AT_SEQUENCE_NUMBER", rs[5]["sequence_number"])})
    assert report(arn)["shards"][0]["served"] == 3
    (child,) = ctl("/_test/split-all", {"stream_arn": arn})["children"]
    ctl("/_test/remove-shard", {"stream_arn": arn, "shard_id": sid})
    r = report(arn)
    (gone,) = r["removed"]
    assert gone["shard_id"] == sid and gone["parent_shard_id"] is None
    assert (gone["records"], gone["served"], gone["unread"], gone["trimmed"]) == (6, 3, 3, 3), gone
    assert gone["ending_sequence_number"] == rs[-1]["sequence_number"]
    assert gone["removed_at"] >= gone["closed_at"]
    assert [(x["event_id"], x["reason"]) for x in r["trimmed_unserved"]] == \
        [(rs[2]["event_id"], "trim"), (rs[3]["event_id"], "removed"), (rs[4]["event_id"], "removed")]
    assert r["trimmed_unserved_count"] == 3
    assert [s["shard_id"] for s in r["shards"]] == [child]
    assert r["shards"][0]["parent_shard_id"] == sid


@test
def lifecycle_rollovers_and_split():
    arn = new_stream(shards=2)
    first = [s["ShardId"] for s in shards(arn)]
    post(arn, [{"key": f"k{i}", "new_image": {}} for i in range(6)])
    try:
        started = lifecycle(arn, rollover_every=0.3, retention=60, split_at=[2])
        assert started["running"] is True
        wait_for("3 rollovers", lambda: report(arn)["rollovers"] >= 3)
    finally:
        assert lifecycle(arn, stop=True)["running"] is False
    r = report(arn)
    assert r["running"] is False and r["error"] is None
    n = r["rollovers"]
    assert n >= 3 and len(r["history"]) == n and r["splits"] == 1, r
    h = r["history"]
    assert [x["rollover"] for x in h] == list(range(1, n + 1))
    assert [x["split"] for x in h[:3]] == [False, True, False]
    # 1: every open shard rolls over to one child.
    assert sorted(h[0]["children"]) == sorted(first)
    assert all(len(c) == 1 for c in h[0]["children"].values())
    # 2: the first open shard by id splits in two, the other rolls over.
    gen1 = sorted(c for cs in h[0]["children"].values() for c in cs)
    assert sorted(h[1]["children"]) == gen1
    assert [len(h[1]["children"][p]) for p in gen1] == [2, 1], h[1]
    # 3: three open shards, one child each.
    gen2 = sorted(c for cs in h[1]["children"].values() for c in cs)
    assert sorted(h[2]["children"]) == gen2 and all(len(c) == 1 for c in h[2]["children"].values())
    # On the clock: the first one rollover_every after the start, then one per period.
    assert h[0]["time"] - started["started_at"] >= 0.29, (h[0], started)
    assert all(b["time"] - a["time"] >= 0.25 for a, b in zip(h, h[1:])), h
    # DescribeStream shows the same lineage; nothing aged out (retention 60 s).
    desc = {s["ShardId"]: s for s in shards(arn)}
    assert r["removed"] == [] and r["trimmed_unserved"] == []
    for x in h:
        for parent, children in x["children"].items():
            assert "EndingSequenceNumber" in desc[parent]["SequenceNumberRange"]
            for c in children:
                assert desc[c]["ParentShardId"] == parent
    open_ids = [s for s, d in desc.items() if "EndingSequenceNumber" not in d["SequenceNumberRange"]]
    assert len(open_ids) == 3, open_ids
    assert sorted(open_ids) == sorted(s["shard_id"] for s in r["shards"] if s["open"])
    assert sorted(open_ids) == sorted(c for cs in h[-1]["children"].values() for c in cs)
    # The children cover the key space: new records land in open shards.
    assert {x["shard_id"] for x in post(arn, [{"key": f"k{i}", "new_image": {}} for i in range(20)])} \
        <= set(open_ids)
    # Stopped means stopped: nothing happens for several periods.
    time.sleep(0.7)
    assert report(arn)["rollovers"] == n


@test
def lifecycle_retention_removes_aged_out_shards():
    arn = new_stream()
    (s0,) = [s["ShardId"] for s in shards(arn)]
    a = post(arn, [{"key": "a", "new_image": {"i": {"N": str(i)}}} for i in range(5)])
    (c1,) = ctl("/_test/split-all", {"stream_arn": arn})["children"]
    d = post(arn, [{"key": "d", "shard_id": c1, "new_image": {"i": {"N": str(i)}}} for i in range(2)])
    b = post(arn, [{"key": "b", "shard_id": c1, "new_image": {"i": {"N": str(i)}}} for i in range(3)])
    ctl("/_test/trim", {"stream_arn": arn, "shard_id": c1, "count": 2})  # d: lost to a trim
    # A reader got part of s0: records 0, 1 and 4, not 2 and 3.
    out = ok("GetRecords", {"ShardIterator": iterator(arn, s0), "Limit": 2})
    assert [x["eventID"] for x in out["Records"]] == [x["event_id"] for x in a[:2]]
    s0_next = out["NextShardIterator"]
    out = ok("GetRecords", {"ShardIterator": iterator(arn, s0, "AT_SEQUENCE_NUMBER", a[4]["sequence_number"])})
    assert [x["eventID"] for x in out["Records"]] == [a[4]["event_id"]]
    recs, _ = read_all(iterator(arn, c1))  # all of b
    assert [x["eventID"] for x in recs] == [x["event_id"] for x in b]
    try:
        lifecycle(arn, rollover_every=0.3, retention=0.8)
        r = wait_for("s0 and c1 to age out", lambda: (
            lambda r: {s0, c1} <= {x["shard_id"] for x in r["removed"]} and r)(report(arn)))
    finally:
        lifecycle(arn, stop=True)
    r = report(arn)
    removed = {x["shard_id"]: x for x in r["removed"]}
    assert [x["shard_id"] for x in r["removed"][:2]] == [s0, c1], "removed in the order they aged out"
    assert {k: removed[s0][k] for k in ("parent_shard_id", "records", "served", "unread", "trimmed")} == \
        {"parent_shard_id": None, "records": 5, "served": 3, "unread": 2, "trimmed": 5}, removed[s0]
    assert {k: removed[c1][k] for k in ("parent_shard_id", "records", "served", "unread", "trimmed")} == \
        {"parent_shard_id": s0, "records": 5, "served": 3, "unread": 2, "trimmed": 5}, removed[c1]
    for x in (removed[s0], removed[c1]):
        assert x["removed_at"] - x["closed_at"] >= 0.79, x  # a closed shard stays for `retention`
    # Lost: d by the trim, a[2] and a[3] by retention; nothing any reader got.
    assert [(x["shard_id"], x["sequence_number"], x["event_id"], x["reason"])
            for x in r["trimmed_unserved"]] == \
        [(c1, x["sequence_number"], x["event_id"], "trim") for x in d] + \
        [(s0, x["sequence_number"], x["event_id"], "retention") for x in a[2:4]]
    # DescribeStream no longer lists them; their children keep ParentShardId.
    desc = shards(arn)
    listed = {s["ShardId"] for s in desc}
    assert s0 not in listed and c1 not in listed
    assert listed == {s["shard_id"] for s in r["shards"]}
    gone = set(removed)
    assert any(s.get("ParentShardId") in gone for s in desc), "a listed child names an unlisted parent"
    assert all(s.get("ParentShardId") in listed | gone for s in desc)
    for sid in (s0, c1):
        err("GetShardIterator", {"StreamArn": arn, "ShardId": sid, "ShardIteratorType": "TRIM_HORIZON"},
            "ResourceNotFoundException")
    err("GetRecords", {"ShardIterator": s0_next}, "ResourceNotFoundException")


@test
def lifecycle_retention_trims_by_append_time():
    # No rollovers: an open shard is trimmed but never leaves the stream.
    arn = new_stream()
    (sid,) = [s["ShardId"] for s in shards(arn)]
    # An ancient ApproximateCreationDateTime does not count: the append time does.
    old = post(arn, [{"key": "k", "new_image": {}, "approximate_creation_time": 1000.0} for _ in range(3)])
    it_old = iterator(arn, sid)
    it_latest = iterator(arn, sid, "LATEST")
    try:
        lifecycle(arn, retention=1.0)
        time.sleep(0.5)  # spacing between the two batches (not a correctness wait)
        assert report(arn)["shards"][0]["trimmed"] == 0
        assert ctl("/_test/generate", {"stream_arn": arn, "records_per_shard": 4})["records"] == 4
        (g0,) = ok("GetRecords", {"ShardIterator": it_latest, "Limit": 1})["Records"]
        trimmed = wait_for("the first batch to be trimmed",
                           lambda: report(arn)["shards"][0]["trimmed"])
        assert trimmed == 3, trimmed
        err("GetRecords", {"ShardIterator": it_old}, "TrimmedDataAccessException")
        (h,) = ok("GetRecords", {"ShardIterator": iterator(arn, sid), "Limit": 1})["Records"]
        assert h["eventID"] == g0["eventID"], "TRIM_HORIZON is the first generated record"
        wait_for("the generated records to be trimmed",
                 lambda: report(arn)["shards"][0]["trimmed"] == 7)
    finally:
        lifecycle(arn, stop=True)
    r = report(arn)
    assert r["rollovers"] == 0 and r["removed"] == []
    (s,) = r["shards"]
    assert s["shard_id"] == sid and s["open"] and (s["records"], s["trimmed"], s["served"]) == (7, 7, 1)
    lost = r["trimmed_unserved"]
    assert [x["event_id"] for x in lost[:3]] == [x["event_id"] for x in old]
    assert all(x["reason"] == "retention" and x["shard_id"] == sid for x in lost)
    gen = lost[3:]
    assert len(gen) == 3 and g0["eventID"] not in {x["event_id"] for x in gen}
    assert all(re.fullmatch(r"[0-9a-f]{32}", x["event_id"]) for x in gen), gen
    assert int(gen[0]["sequence_number"]) > int(g0["dynamodb"]["SequenceNumber"])
    assert [s["ShardId"] for s in shards(arn)] == [sid]


@test
def lifecycle_every_record_is_served_or_reported_lost():
    # A writer and a reader too slow to keep up, through rollovers, a split
    # and retention: every record ends up read or in trimmed_unserved, never
    # both, and removed shards' `unread` adds up.
    arn = new_stream(shards=2)
    written, read = [], []
    its = {}  # shard id -> next iterator, or None once read to its end
    dead = set()  # shards that left the stream while we read them

    def read_pass(limit):
        for s in shards(arn):
            sid = s["ShardId"]
            if its.get(sid, "") is None:
                continue
            it = its.get(sid)
            if not it:
                # Listed a moment ago, but it may age out before this call.
                st, out, _ = api("GetShardIterator", {"StreamArn": arn, "ShardId": sid,
                                                      "ShardIteratorType": "TRIM_HORIZON"})
                if st == 400 and out["__type"].endswith("#ResourceNotFoundException"):
                    dead.add(sid)
                    its[sid] = None
                    continue
                assert st == 200, out
                it = out["ShardIterator"]
            st, out, _ = api("GetRecords", {"ShardIterator": it, "Limit": limit})
            if st == 400 and out["__type"].endswith("#TrimmedDataAccessException"):
                its[sid] = ""  # start again at TRIM_HORIZON
                continue
            if st == 400 and out["__type"].endswith("#ResourceNotFoundException"):
                dead.add(sid)
                its[sid] = None
                continue
            assert st == 200, out
            read.extend(x["eventID"] for x in out["Records"])
            its[sid] = out.get("NextShardIterator")

    try:
        lifecycle(arn, rollover_every=0.25, retention=0.6, split_at=[2])
        t_end = time.monotonic() + 1.6
        i = 0
        while time.monotonic() < t_end:
            written += [x["event_id"] for x in post(arn, [
                {"key": f"k{i}-{j}", "new_image": {"n": {"N": str(i)}}} for j in range(4)])]
            if i % 4 == 0:  # a reader that falls behind: records age out unread
                read_pass(1)
            i += 1
            time.sleep(0.02)
    finally:
        lifecycle(arn, stop=True)
    while True:  # drain what is still there
        before = len(read)
        read_pass(1000)
        if len(read) == before:
            break
    r = report(arn)
    lost = [x["event_id"] for x in r["trimmed_unserved"]]
    assert r["rollovers"] >= 3 and r["splits"] == 1 and r["removed"], r
    assert lost and read, (len(lost), len(read))
    assert len(set(read)) == len(read), "no record read twice by this reader"
    assert not set(read) & set(lost), "a record reported lost was read"
    assert sorted(read + lost) == sorted(written), (len(read), len(lost), len(written))
    removed_ids = {x["shard_id"] for x in r["removed"]}
    assert dead <= removed_ids, (dead, removed_ids)
    assert sum(x["unread"] for x in r["removed"]) == \
        sum(1 for x in r["trimmed_unserved"] if x["shard_id"] in removed_ids)
    assert sum(x["served"] for x in r["removed"]) + sum(x["served"] for x in r["shards"]) == len(read)


@test
def lifecycle_threads_stop_on_reset_and_shutdown():
    # In-process server, to see the threads themselves.
    global BASE
    sys.path.insert(0, str(HERE))
    import streams_fault_server as sfs

    def threads():
        return [t for t in threading.enumerate() if t.name.startswith("lifecycle ")]

    srv = sfs.make_server("127.0.0.1", 0)
    serving = threading.Thread(target=srv.serve_forever, daemon=True)
    serving.start()
    saved, BASE = BASE, f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        a, b = new_stream(), new_stream(table="other")
        lifecycle(a, rollover_every=0.05)
        lifecycle(b, retention=5)
        assert len(threads()) == 2
        wait_for("rollovers", lambda: report(a)["rollovers"] >= 2)
        lifecycle(a, rollover_every=0.05, retention=5)  # replaces a's thread; counts go on
        wait_for("the replaced thread to end", lambda: len(threads()) == 2)
        assert report(a)["rollovers"] >= 2 and report(a)["retention"] == 5
        lifecycle(a, stop=True)
        wait_for("a's thread to end", lambda: len(threads()) == 1)
        ctl("/_test/reset")
        wait_for("reset to stop every lifecycle", lambda: not threads())
        c = new_stream()
        lifecycle(c, rollover_every=0.05)
        assert len(threads()) == 1
    finally:
        BASE = saved
        srv.shutdown()
        srv.server_close()
    wait_for("server shutdown to stop the lifecycle", lambda: not threads())


# --------------------------------------------------------------------------
# boto3 pass (runs under .venv/bin/python, against the same server)
# --------------------------------------------------------------------------

def boto3_pass(base: str) -> tuple[int, int]:
    import datetime

    import boto3
    from botocore.config import Config

    global BASE
    BASE = base
    client = boto3.client(
        "dynamodbstreams", endpoint_url=base, region_name="eu-central-1",
        aws_access_key_id="test", aws_secret_access_key="test",
        # No SDK retries: each injected fault must surface exactly once.
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
    ex = client.exceptions
    results = []

    def check(name, fn):
        try:
            fn()
            results.append(True)
            print(f"  ok    boto3 {name}")
        except Exception:  # noqa: BLE001
            results.append(False)
            print(f"  FAIL  boto3 {name}")
            traceback.print_exc()

    arn = new_stream(table="boto", shards=3, describe_page_size=2)

    def describe():
        assert any(s["StreamArn"] == arn for s in client.list_streams(TableName="boto")["Streams"])
        d = client.describe_stream(StreamArn=arn)["StreamDescription"]
        assert isinstance(d["CreationRequestDateTime"], datetime.datetime)
        assert len(d["Shards"]) == 2 and d["LastEvaluatedShardId"] == d["Shards"][-1]["ShardId"]
        d2 = client.describe_stream(StreamArn=arn, ExclusiveStartShardId=d["LastEvaluatedShardId"])
        assert len(d2["StreamDescription"]["Shards"]) == 1
        assert "LastEvaluatedShardId" not in d2["StreamDescription"]

    def records_and_lineage():
        (parent,) = [s["ShardId"] for s in client.describe_stream(StreamArn=arn, Limit=1)
                     ["StreamDescription"]["Shards"]]
        rs = post(arn, [{"key": "b", "shard_id": parent, "new_image": IMAGE,
                         "old_image": {"pk": {"S": "order-1"}}},
                        {"key": "b", "shard_id": parent, "old_image": IMAGE, "ttl_delete": True}])
        kids = ctl("/_test/split", {"stream_arn": arn, "shard_id": parent})["children"]
        got = client.describe_stream(StreamArn=arn, ShardFilter={"Type": "CHILD_SHARDS", "ShardId": parent})
        assert [s["ShardId"] for s in got["StreamDescription"]["Shards"]] == kids
        assert all(s["ParentShardId"] == parent for s in got["StreamDescription"]["Shards"])
        it = client.get_shard_iterator(StreamArn=arn, ShardId=parent,
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        out = client.get_records(ShardIterator=it, Limit=1000)
        assert "NextShardIterator" not in out, "closed shard read to its end"
        r1, r2 = out["Records"]
        d = r1["dynamodb"]
        assert isinstance(d["ApproximateCreationDateTime"], datetime.datetime)
        assert d["SequenceNumber"] == rs[0]["sequence_number"]
        assert d["NewImage"]["amount"] == {"N": "12345678901234567890.123456789012345678"}
        assert d["NewImage"]["blob"] == {"B": b"\x00\xffbytes"}, "B is base64 on the wire"
        assert d["NewImage"]["nested"] == IMAGE["nested"]
        assert r1["eventName"] == "MODIFY" and r1["eventID"] == rs[0]["event_id"]
        assert "userIdentity" not in r1
        assert r2["userIdentity"] == {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}
        assert r2["eventName"] == "REMOVE" and "NewImage" not in r2["dynamodb"]

    def error_mapping():
        (r,) = post(arn, [{"key": "e", "new_image": {}}])
        sid = r["shard_id"]
        it = client.get_shard_iterator(StreamArn=arn, ShardId=sid,
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        cases = []

        def expect(exc, code, status, fn):
            try:
                fn()
            except exc as e:
                assert e.response["Error"]["Code"] == code, e.response
                assert e.response["ResponseMetadata"]["HTTPStatusCode"] == status, e.response
                assert e.response["Error"]["Message"]
                cases.append(code)
                return
            raise AssertionError(f"{code} not raised")

        ctl("/_test/throttle", {"operation": "GetRecords", "times": 1, "error": "LimitExceededException"})
        expect(ex.LimitExceededException, "LimitExceededException", 400,
               lambda: client.get_records(ShardIterator=it))
        ctl("/_test/throttle", {"operation": "GetRecords", "times": 1, "error": "InternalServerError"})
        expect(ex.InternalServerError, "InternalServerError", 500,
               lambda: client.get_records(ShardIterator=it))
        ctl("/_test/trim", {"stream_arn": arn, "shard_id": sid, "count": 1})
        expect(ex.TrimmedDataAccessException, "TrimmedDataAccessException", 400,
               lambda: client.get_records(ShardIterator=it))
        expect(ex.TrimmedDataAccessException, "TrimmedDataAccessException", 400,
               lambda: client.get_shard_iterator(StreamArn=arn, ShardId=sid,
                                                 ShardIteratorType="AT_SEQUENCE_NUMBER",
                                                 SequenceNumber=r["sequence_number"]))
        it2 = client.get_shard_iterator(StreamArn=arn, ShardId=sid,
                                        ShardIteratorType="LATEST")["ShardIterator"]
        ctl("/_test/expire-iterators", {"stream_arn": arn})
        expect(ex.ExpiredIteratorException, "ExpiredIteratorException", 400,
               lambda: client.get_records(ShardIterator=it2))
        expect(ex.ResourceNotFoundException, "ResourceNotFoundException", 400,
               lambda: client.describe_stream(StreamArn=arn + "x"))
        expect(ex.ClientError, "ValidationException", 400,
               lambda: client.get_records(ShardIterator="garbage"))
        assert len(cases) == 7

    check("describe_stream paging and types", describe)
    check("get_records parsing, images, userIdentity, closed shard end", records_and_lineage)
    check("error codes map to modeled exceptions", error_mapping)
    return results.count(True), results.count(False)


# --------------------------------------------------------------------------

def main() -> int:
    global BASE
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", action="store_true", help="also measure throughput at volume")
    ap.add_argument("--no-boto3", action="store_true", help="leave out the boto3 pass")
    ap.add_argument("-k", help="run only tests whose name contains this")
    ap.add_argument("--boto3-against", help=argparse.SUPPRESS)  # internal: run the boto3 pass only
    args = ap.parse_args()

    if args.boto3_against:
        passed, failed = boto3_pass(args.boto3_against)
        print(f"BOTO3 {passed} passed, {failed} failed")
        return 0 if failed == 0 else 1

    server = ServerProcess()
    BASE = server.base
    passed = failed = 0
    try:
        for fn in TESTS:
            if args.k and args.k not in fn.__name__:
                continue
            t0 = time.perf_counter()
            try:
                fn()
                passed += 1
                print(f"  ok    {fn.__name__} ({time.perf_counter() - t0:.2f}s)")
            except Exception:  # noqa: BLE001
                failed += 1
                print(f"  FAIL  {fn.__name__}")
                traceback.print_exc()
            sys.stdout.flush()

        if args.bench:
            for per, n, readers in ((200000, 1, 1), (50000, 4, 4)):
                rate = measure_throughput(per, n, readers)
                print(f"  bench {per * n:,} records, {n} shard(s), {readers} reader(s): "
                      f"{rate:,.0f} records/s")

        if not args.no_boto3 and not args.k:
            py = None
            try:
                import boto3  # noqa: F401
                py = sys.executable
            except ImportError:
                if VENV_PY.exists():
                    py = str(VENV_PY)
            if py is None:
                failed += 1
                print(f"  FAIL  boto3 pass: boto3 is not importable and {VENV_PY} does not exist "
                      "(install the venv, or pass --no-boto3)")
            else:
                proc = subprocess.run([py, __file__, "--boto3-against", BASE],
                                      capture_output=True, text=True, timeout=300)
                sys.stdout.write(proc.stdout)
                sys.stderr.write(proc.stderr)
                m = re.search(r"^BOTO3 (\d+) passed, (\d+) failed$", proc.stdout, re.M)
                if m:
                    passed += int(m.group(1))
                    failed += int(m.group(2))
                else:
                    failed += 1
                    print(f"  FAIL  boto3 pass did not run (exit {proc.returncode}): is boto3 in {py}?")
    finally:
        server.stop()

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
