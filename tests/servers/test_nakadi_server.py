#!/usr/bin/env python3
"""Self-test of the Nakadi test server, over real HTTP.

    python3 tests/servers/test_nakadi_server.py [-k NAME] [--bench]

Starts nakadi_server.py as subprocesses (as the integration tests do: `--port
0`, reading `LISTENING <port>`) and checks every feature with http.client on
keep-alive connections, plus the JSON Schema file on its own. The server needs
`jsonschema` (tests/requirements.txt); without it the servers fail to start and
so do these tests: a failure, never a skip.

--bench also measures how many events/s the server accepts (50 requests of
1,000 events of ~1 KB, with and without schema validation).
Prints `N passed, M failed`; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import decimal
import gzip
import http.client
import json
import random
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVER = HERE / "nakadi_server.py"
SCHEMA = HERE.parent / "schema" / "data-change-event.schema.json"
TOKEN = "s3cret-token-value"
ET = "payments.order-changed"


# ---- harness ---------------------------------------------------------------


class ServerProcess:
    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING "):
            self.proc.kill()
            raise RuntimeError(f"server did not start: stdout {line!r}, stderr {self.proc.stderr.read()!r}")
        self.first_line = line
        self.port = int(line.split()[1])
        # Drain stderr in the background so a chatty --verbose server never
        # blocks on a full pipe.
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Client:
    """One keep-alive connection; reconnects only when the server closed it."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.port = port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if isinstance(body, (dict, list)) or body is None and method == "POST":
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def json(self, method, path, body=None):
        status, headers, data = self.request(method, path, body)
        return status, json.loads(data) if data else None

    def publish(self, events, event_type=ET, token=None, flow_id=None, gzipped=False, raw=None):
        """events: list of dicts, or raw=<exact body text>."""
        body = (raw if raw is not None else json.dumps(events)).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if flow_id is not None:
            headers["X-Flow-Id"] = flow_id
        if gzipped:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return self.request("POST", f"/event-types/{event_type}/events", body, headers)

    def close(self):
        self.conn.close()


def new_eid() -> str:
    return str(uuid.uuid4())


def event(eid=None, op="U", item=None, patch=None, data_type="payments:order", **metadata):
    meta = {"eid": eid or new_eid(), "occurred_at": "2026-11-22T06:16:10.123Z", **metadata}
    return {
        "metadata": meta,
        "data_op": op,
        "data_type": data_type,
        "data": {
            "item": item if item is not None else {"pk": "order-42", "status": "paid"},
            "patch": patch if patch is not None else [{"op": "replace", "path": "/status", "value": "paid"}],
        },
    }


def check(cond, message="check failed"):
    if not cond:
        raise AssertionError(message)


def eq(actual, expected, what=""):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Ctx:
    """The servers under test and a client for each."""

    def __init__(self):
        # plain: default schema path and size limit, no token
        self.plain = ServerProcess()
        # auth: a token, an explicit --schema, --host
        self.auth = ServerProcess("--token", TOKEN, "--schema", str(SCHEMA), "--host", "127.0.0.1")
        # fast: benchmark mode, small size limit, verbose logging
        self.fast = ServerProcess("--no-validate", "--max-event-bytes", "300", "--verbose")
        self.c = Client(self.plain.port)
        self.a = Client(self.auth.port)
        self.f = Client(self.fast.port)

    def reset(self):
        for client in (self.c, self.a, self.f):
            status, _, _ = client.request("POST", "/_test/reset")
            eq(status, 200, "reset")

    def stop(self):
        for s in (self.plain, self.auth, self.fast):
            s.stop()


def events_of(client, query=""):
    status, headers, data = client.request("GET", "/_test/events" + query)
    eq(status, 200, "GET /_test/events")
    return data.decode("utf-8")


def count_of(client, query=""):
    return json.loads(events_of(client, query))["count"]


def requests_of(client, query=""):
    status, body = client.json("GET", "/_test/requests" + query)
    eq(status, 200, "GET /_test/requests")
    return body


def post_fault(client, rule):
    status, body = client.json("POST", "/_test/faults", rule)
    eq(status, 200, f"POST /_test/faults {rule}")
    return body


def expect_problem(status, headers, data, expected_status, what=""):
    eq(status, expected_status, what)
    eq(headers.get("content-type"), "application/problem+json", f"{what} content type")
    problem = json.loads(data)
    check(isinstance(problem, dict), f"{what}: problem is an object, got {problem!r}")
    eq(problem.get("status"), expected_status, f"{what} problem.status")
    for field in ("type", "title", "detail"):
        check(isinstance(problem.get(field), str) and problem[field], f"{what}: problem.{field} missing: {problem}")
    return problem


# ---- the schema on its own -------------------------------------------------


@test
def schema_file_is_valid_2020_12_and_accepts_the_design_example(ctx):
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    eq(schema["$schema"], "https://json-schema.org/draft/2020-12/schema", "$schema")
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    example = {
        "metadata": {
            "eid": "4b0c9f2e-3a51-5d6c-8e7f-0a1b2c3d4e5f",
            "occurred_at": "2026-11-22T06:16:10.123Z",
            "partition_compaction_key": "order-42",
        },
        "data_op": "U",
        "data_type": "payments:order",
        "data": {"item": {"pk": "order-42"}, "patch": [{"op": "replace", "path": "/status", "value": "paid"}]},
    }
    errors = list(validator.iter_errors(example))
    eq(errors, [], "DESIGN.md example")
    # Every rule carries a $comment saying where it comes from.
    for name in ("uuid", "rfc3339-date-time", "metadata", "data", "json-pointer", "patch-operation"):
        check("$comment" in schema["$defs"][name], f"$defs/{name} has a $comment")


def mutants(seed: int, n: int, originals: list) -> list:
    """Random small edits of valid events: deleted, replaced and added members
    anywhere in the tree, with values chosen to hit the schema's rules."""
    rng = random.Random(seed)
    values = [None, True, False, 0, 1, -2.5, 1e300, "", "x", "C", "S", "add", "move", "/a", "a", "~2", new_eid(),
              "2026-11-22T06:16:10Z", "2026-11-22", [], {}, [new_eid()], {"k": "v"}, {"k": 1},
              [{"op": "add", "path": "/a", "value": 1}], [{"op": "move", "path": "/a"}]]
    names = ["eid", "occurred_at", "received_at", "version", "published_by", "event_type", "parent_eids", "span_ctx",
             "partition", "flow_id", "data", "data_op", "data_type", "item", "patch", "op", "path", "from", "value",
             "metadata", "extra"]
    out = []
    for _ in range(n):
        doc = json.loads(json.dumps(rng.choice(originals)))
        for _ in range(rng.randint(1, 3)):
            nodes = []

            def walk(node):
                if isinstance(node, (dict, list)):
                    nodes.append(node)
                    for child in node.values() if isinstance(node, dict) else node:
                        walk(child)

            walk(doc)
            node = rng.choice(nodes)
            action = rng.choice(("delete", "replace", "add"))
            if isinstance(node, dict):
                if action == "add" or not node:
                    node[rng.choice(names)] = json.loads(json.dumps(rng.choice(values)))
                elif action == "delete":
                    del node[rng.choice(list(node))]
                else:
                    node[rng.choice(list(node))] = json.loads(json.dumps(rng.choice(values)))
            else:
                if action == "add" or not node:
                    node.append(json.loads(json.dumps(rng.choice(values))))
                elif action == "delete":
                    node.pop(rng.randrange(len(node)))
                else:
                    node[rng.randrange(len(node))] = json.loads(json.dumps(rng.choice(values)))
        out.append(doc)
    return out


@test
def compiled_schema_check_agrees_with_jsonschema(ctx):
    # The server checks events with the schema compiled to closures (fast)
    # and asks jsonschema only for the details of a rejection; the two must
    # agree on every verdict.
    import jsonschema

    sys.path.insert(0, str(HERE))
    import nakadi_server

    schema = json.loads(SCHEMA.read_text())
    fast = nakadi_server.compile_schema(schema)
    slow = jsonschema.Draft202012Validator(schema)
    originals = [event(), full_event(), bench_event(7), event(op="D", item={}, patch=[])]
    samples = originals + [bad for _, bad, _ in invalid_cases()] + mutants(20261122, 4000, originals)
    # Parsed as the server parses bodies: numbers as Decimal.
    samples = [json.loads(json.dumps(x), parse_float=decimal.Decimal) for x in samples]
    verdicts = [(slow.is_valid(x), fast(x)) for x in samples]
    disagree = [(x, v) for x, v in zip(samples, verdicts) if v[0] != v[1]]
    eq(disagree[:3], [], f"{len(disagree)} disagreements (jsonschema, compiled)")
    valid = sum(v[0] for v in verdicts)
    check(valid > 200 and len(samples) - valid > 2000, f"both verdicts well represented: {valid} valid of {len(samples)}")
    for unsupported in ({"patternProperties": {"a": {}}}, {"$ref": "other.json"}, {"unevaluatedProperties": False}):
        try:
            nakadi_server.compile_schema(unsupported)
            raise AssertionError(f"{unsupported} compiled")
        except nakadi_server.Unsupported:
            pass


@test
def jsonschema_only_validator_gives_the_same_answers(ctx):
    server = ServerProcess("--validator", "jsonschema")
    try:
        c = Client(server.port)
        eq(c.publish([event(), full_event()])[0], 200, "valid")
        for name, bad, detail in invalid_cases()[:8]:
            status, _, data = c.publish([bad])
            eq(status, 422, name)
            check(detail in json.loads(data)[0]["detail"], f"{name}: {data!r}")
        c.close()
    finally:
        server.stop()


# ---- publishing: the happy path ----------------------------------------------


@test
def listening_line_and_health(ctx):
    check(ctx.plain.first_line == f"LISTENING {ctx.plain.port}\n", ctx.plain.first_line)
    status, body = ctx.c.json("GET", "/_test/health")
    eq(status, 200, "health")
    eq(body, {"status": "ok"}, "health body")


@test
def accepted_events_are_stored_as_their_exact_text(ctx):
    eid1, eid2 = new_eid(), new_eid()
    # 38 significant digits, big exponents, trailing zeros, odd spacing and a
    # non-ASCII string: any float round trip or re-serialisation shows.
    e1 = (
        '{ "metadata" : {"eid":"%s","occurred_at":"2026-11-22T06:16:10.123Z"},\n'
        '  "data_op":"C","data_type":"payments:order",\n'
        '  "data":{"item":{"pk":"order-42","amount":12345678901234567890.123456789012345678,'
        '"big":1E+125,"small":-1.0E-130,"zero":0.000,"name":"Zoë ✓"},'
        '"patch":[{"op":"add","path":"/amount","value":12345678901234567890.123456789012345678}]}}'
    ) % eid1
    e2 = json.dumps(event(eid2, item={"n": 99999999999999999999999999999999999999}))
    raw = f"[\n {e1} ,\t{e2}\r\n]\n"
    status, headers, data = ctx.c.publish(None, raw=raw)
    eq(status, 200, "publish")
    eq(data, b"", "200 body")
    eq(headers.get("content-length"), "0", "200 Content-Length")
    text = events_of(ctx.c)
    eq(text, '{"count":2,"events":[%s,%s]}' % (e1, e2), "GET /_test/events text")
    parsed = json.loads(text)
    eq([e["metadata"]["eid"] for e in parsed["events"]], [eid1, eid2], "eids in arrival order")


@test
def empty_batch_is_accepted(ctx):
    status, _, data = ctx.c.publish([])
    eq(status, 200, "[]")
    eq(count_of(ctx.c), 0, "nothing stored")


@test
def keep_alive_connection_is_reused(ctx):
    ctx.c.request("GET", "/_test/health")
    sock = ctx.c.conn.sock
    check(sock is not None, "connected")
    for i in range(5):
        status, _, _ = ctx.c.publish([event()])
        eq(status, 200, "publish")
        status, _, _ = ctx.c.publish({"not": "an array"})
        eq(status, 400, "bad body")
    check(ctx.c.conn.sock is sock, "the same socket served all requests")
    eq(count_of(ctx.c), 5, "stored")


@test
def gzip_body_is_decompressed_and_recorded(ctx):
    e = event(item={"x": 1.10})
    raw = json.dumps([e])
    status, _, _ = ctx.c.publish(None, raw=raw, gzipped=True)
    eq(status, 200, "gzip publish")
    eq(json.loads(events_of(ctx.c))["events"], [e], "stored")
    eq(requests_of(ctx.c)[-1]["gzip"], True, "requests.gzip")
    ctx.c.publish([event()])
    eq(requests_of(ctx.c)[-1]["gzip"], False, "requests.gzip without gzip")


@test
def chunked_body_is_read(ctx):
    e = event()
    body = json.dumps([e]).encode()
    ctx.c.conn.request(
        "POST",
        f"/event-types/{ET}/events",
        body=iter([body[:10], body[10:]]),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        encode_chunked=True,
    )
    resp = ctx.c.conn.getresponse()
    resp.read()
    eq(resp.status, 200, "chunked publish")
    eq(json.loads(events_of(ctx.c))["events"], [e], "stored")


@test
def flow_id_is_recorded_and_echoed(ctx):
    e = event()
    status, headers, _ = ctx.c.publish([e], flow_id="flow-abc")
    eq(status, 200, "publish")
    eq(headers.get("x-flow-id"), "flow-abc", "echoed X-Flow-Id")
    eq(requests_of(ctx.c)[-1]["flow_id"], "flow-abc", "requests.flow_id")
    ctx.c.publish([event()])
    eq(requests_of(ctx.c)[-1]["flow_id"], None, "no flow id")
    meta = json.loads(events_of(ctx.c, "?meta=1"))["events"][0]
    eq(meta["flow_id"], "flow-abc", "events meta flow_id")
    eq(meta["eid"], e["metadata"]["eid"], "events meta eid")
    eq(meta["event"], e, "events meta event")
    eq(meta["event_type"], ET, "events meta event_type")
    eq(meta["seq"], 1, "events meta seq")
    check(meta["received_at"].endswith("Z") and "T" in meta["received_at"], meta["received_at"])
    check(abs(meta["received_epoch"] - time.time()) < 60, f"received_epoch {meta['received_epoch']}")


def full_event():
    """Every optional metadata field and every patch operation."""
    return event(
        op="S",
        patch=[
            {"op": "add", "path": "/a~1b", "value": None},
            {"op": "remove", "path": "/x/0"},
            {"op": "replace", "path": "", "value": {}},
            {"op": "move", "from": "/a", "path": "/b~0c"},
            {"op": "copy", "from": "/a", "path": "/c"},
            {"op": "test", "path": "/d", "value": 1},
        ],
        occurred_at="1996-12-19t16:39:57.5-08:00",
        parent_eids=[new_eid()],
        flow_id="f",
        partition="0",
        partition_compaction_key="order-42",
        span_ctx={"ot-tracer-traceid": "abc"},
        event_type=ET,
    )


@test
def optional_metadata_and_every_patch_op_are_valid(ctx):
    e = full_event()
    status, _, data = ctx.c.publish([e, event(op="C", occurred_at="2026-11-22T06:16:10z"), event(op="D")])
    eq(status, 200, f"publish: {data!r}")


# ---- publishing: validation ----------------------------------------------------


def without(d, *path):
    d = json.loads(json.dumps(d))
    target = d
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return d


def with_(d, value, *path):
    d = json.loads(json.dumps(d))
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


def invalid_cases():
    """(name, invalid event, a phrase its 422 detail must contain)."""
    base = event()
    return [
        ("missing eid", without(base, "metadata", "eid"), "eid"),
        ("eid not a uuid", with_(base, "105a76d8", "metadata", "eid"), "is not a valid"),
        ("eid with trailing newline", with_(base, new_eid() + "\n", "metadata", "eid"), "is not a valid"),
        ("missing occurred_at", without(base, "metadata", "occurred_at"), "occurred_at"),
        ("occurred_at without offset", with_(base, "2026-11-22T06:16:10", "metadata", "occurred_at"), "is not a valid"),
        ("occurred_at as a date", with_(base, "2026-11-22", "metadata", "occurred_at"), "is not a valid"),
        ("occurred_at month 13", with_(base, "2026-13-22T06:16:10Z", "metadata", "occurred_at"), "is not a valid"),
        ("received_at set", with_(base, "2026-11-22T06:16:10Z", "metadata", "received_at"), "received_at must not be set"),
        ("version set", with_(base, "1.0.0", "metadata", "version"), "version must not be set"),
        ("published_by set", with_(base, "jane", "metadata", "published_by"), "published_by must not be set"),
        ("unknown metadata field", with_(base, "x", "metadata", "partition_key"), "partition_key"),
        ("parent_eids not uuids", with_(base, ["x"], "metadata", "parent_eids"), "is not a valid"),
        ("span_ctx value not a string", with_(base, {"a": 1}, "metadata", "span_ctx"), "not of type 'string'"),
        ("metadata.event_type of another type", with_(base, "other.type", "metadata", "event_type"), "does not match the endpoint"),
        ("data_op X", with_(base, "X", "data_op"), "'X' is not one of"),
        ("missing data_op", without(base, "data_op"), "data_op"),
        ("missing data_type", without(base, "data_type"), "data_type"),
        ("data_type not a string", with_(base, 5, "data_type"), "not of type 'string'"),
        ("missing data", without(base, "data"), "'data' is a required property"),
        ("patch at top level", with_(base, [], "patch"), "patch"),
        ("data without patch", without(base, "data", "patch"), "'patch' is a required property"),
        ("item not an object", with_(base, [1], "data", "item"), "not of type 'object'"),
        ("extra key in data", with_(base, 1, "data", "old"), "old"),
        ("unknown patch op", with_(base, [{"op": "merge", "path": "/a", "value": 1}], "data", "patch"), "'merge' is not one of"),
        ("add without value", with_(base, [{"op": "add", "path": "/a"}], "data", "patch"), "'value' is a required property"),
        ("move without from", with_(base, [{"op": "move", "path": "/a"}], "data", "patch"), "'from' is a required property"),
        ("path without leading slash", with_(base, [{"op": "remove", "path": "a"}], "data", "patch"), "is not a valid"),
        ("unescaped ~ in path", with_(base, [{"op": "remove", "path": "/a~2"}], "data", "patch"), "is not a valid"),
        ("extra member in patch op", with_(base, [{"op": "remove", "path": "/a", "x": 1}], "data", "patch"), "x"),
        ("not an object", 5, "not of type 'object'"),
    ]


@test
def invalid_events_fail_the_whole_batch_with_422_items(ctx):
    base = event()
    cases = invalid_cases()
    for name, bad, detail in cases:
        good1, good2 = event(), event()
        status, headers, data = ctx.c.publish([good1, bad, good2])
        eq(status, 422, name)
        eq(headers.get("content-type"), "application/json", f"{name}: content type")
        items = json.loads(data)
        eq(len(items), 3, f"{name}: one item per event")
        for i, good in ((0, good1), (2, good2)):
            eq(items[i]["eid"], good["metadata"]["eid"], f"{name}: item {i} eid")
            eq((items[i]["publishing_status"], items[i]["step"]), ("aborted", "none"), f"{name}: item {i}")
        eq((items[1]["publishing_status"], items[1]["step"]), ("failed", "validating"), f"{name}: item 1")
        check(detail in items[1]["detail"], f"{name}: detail {items[1]['detail']!r} lacks {detail!r}")
        bad_eid = bad["metadata"].get("eid") if isinstance(bad, dict) and "metadata" in bad else None
        eq(items[1].get("eid"), bad_eid if isinstance(bad_eid, str) else None, f"{name}: failed item eid")
    eq(count_of(ctx.c), 0, "nothing stored from invalid batches")
    eq({r["status"] for r in requests_of(ctx.c)}, {422}, "all requests 422")
    # The same event_type as the endpoint is fine.
    status, _, _ = ctx.c.publish([with_(base, ET, "metadata", "event_type")])
    eq(status, 200, "matching metadata.event_type")


@test
def several_invalid_events_are_all_reported(ctx):
    bad1 = with_(event(), "X", "data_op")
    bad2 = without(event(), "data_type")
    status, _, data = ctx.c.publish([bad1, event(), bad2])
    eq(status, 422, "status")
    eq([i["publishing_status"] for i in json.loads(data)], ["failed", "aborted", "failed"], "statuses")


def event_of_size(size: int, filler: str) -> str:
    """An event whose JSON text is exactly `size` UTF-8 bytes."""
    e = event(eid="00000000-0000-4000-8000-000000000000")
    e["data"]["item"]["pad"] = ""
    empty = json.dumps(e, ensure_ascii=False)
    missing = size - len(empty.encode("utf-8"))
    per = len(filler.encode("utf-8"))
    pad = filler * (missing // per) + "a" * (missing % per)
    e["data"]["item"]["pad"] = pad
    text = json.dumps(e, ensure_ascii=False)
    eq(len(text.encode("utf-8")), size, "built event size")
    return text


@test
def event_size_is_counted_in_bytes_of_the_received_text(ctx):
    # Default limit 999000 bytes; a 3-byte character makes bytes != chars.
    at_limit = event_of_size(999_000, "€")
    over = event_of_size(999_001, "€")
    check(len(over) < 999_000, "the over-limit event has fewer characters than the limit")
    status, _, data = ctx.c.publish(None, raw=f"[{at_limit}]")
    eq(status, 200, f"999000 bytes: {data[:200]!r}")
    status, _, data = ctx.c.publish(None, raw=f"[{over}, {json.dumps(event())}]")
    eq(status, 422, "999001 bytes")
    items = json.loads(data)
    check("too large" in items[0]["detail"] and "999001" in items[0]["detail"], items[0]["detail"])
    eq(items[1]["publishing_status"], "aborted", "the other event")
    # Whitespace inside the event counts, as in Nakadi ("we use the batch input").
    spaced = at_limit[:-1] + " }"
    status, _, _ = ctx.c.publish(None, raw=f"[{spaced}]")
    eq(status, 422, "extra space inside the event counts")
    # Whitespace between events does not.
    status, _, _ = ctx.c.publish(None, raw=f"[   {at_limit}   ]")
    eq(status, 200, "space around the event does not count")
    eq(count_of(ctx.c, "?limit=0"), 2, "stored")


@test
def bodies_that_are_not_a_json_array_get_400(ctx):
    cases = [
        ("object", '{"metadata": {}}'),
        ("string", '"x"'),
        ("empty", ""),
        ("malformed", '[{"a": 1,}]'),
        ("truncated", '[{"a": 1}'),
        ("data after the array", "[] []"),
        ("NaN", '[{"a": NaN}]'),
        ("Infinity", '[{"a": -Infinity}]'),
        ("missing comma", '[{"a": 1} {"b": 2}]'),
    ]
    for name, raw in cases:
        status, headers, data = ctx.c.publish(None, raw=raw)
        expect_problem(status, headers, data, 400, name)
    status, headers, data = ctx.c.request(
        "POST", f"/event-types/{ET}/events", b"\x1f\x8bnot gzip", {"Content-Encoding": "gzip"}
    )
    expect_problem(status, headers, data, 400, "bad gzip")
    status, headers, data = ctx.c.request("POST", f"/event-types/{ET}/events", b'["\xff"]', {})
    expect_problem(status, headers, data, 400, "not UTF-8")
    status, headers, data = ctx.c.request("POST", f"/event-types/{ET}/events", b"[]", {"Content-Encoding": "br"})
    expect_problem(status, headers, data, 400, "unknown encoding")
    eq(count_of(ctx.c), 0, "nothing stored")
    eq(len(requests_of(ctx.c)), len(cases) + 3, "every request recorded")


# ---- scripted faults -------------------------------------------------------------


@test
def status_faults_answer_a_problem(ctx):
    for code in (400, 403, 404, 422, 429, 500, 502, 503, 504):
        post_fault(ctx.c, {"status": code, "times": 1})
        status, headers, data = ctx.c.publish([event()])
        expect_problem(status, headers, data, code, f"fault {code}")
        check("retry-after" not in headers, f"{code}: no Retry-After unless asked")
    eq(count_of(ctx.c), 0, "nothing stored")
    status, _, _ = ctx.c.publish([event()])
    eq(status, 200, "rules consumed")


@test
def status_fault_with_times_and_retry_after(ctx):
    post_fault(ctx.c, {"status": 503, "times": 3, "retry_after": "2"})
    status, faults = ctx.c.json("GET", "/_test/faults")
    eq(faults, [{"status": 503, "times": 3, "retry_after": "2"}], "GET /_test/faults")
    e = event()
    for i in range(3):
        status, headers, data = ctx.c.publish([e])
        expect_problem(status, headers, data, 503, f"attempt {i}")
        eq(headers.get("retry-after"), "2", "Retry-After")
    eq(ctx.c.json("GET", "/_test/faults")[1], [], "rule consumed")
    status, _, _ = ctx.c.publish([e])
    eq(status, 200, "4th attempt")
    eq(count_of(ctx.c), 1, "stored once")
    reqs = requests_of(ctx.c)
    eq([r["status"] for r in reqs], [503, 503, 503, 200], "request statuses")
    eq(reqs[0]["fault"], {"status": 503, "retry_after": "2"}, "requests.fault")
    eq(reqs[3]["fault"], None, "no fault")
    eq({r["eids"][0] for r in reqs}, {e["metadata"]["eid"]}, "same eid every time")
    eq([r["seq"] for r in reqs], [1, 2, 3, 4], "seq")


@test
def persistent_rule_until_cleared_and_first_match_wins(ctx):
    post_fault(ctx.c, [{"status": 500, "times": 1}, {"status": 502}])
    codes = [ctx.c.publish([event()])[0] for _ in range(4)]
    eq(codes, [500, 502, 502, 502], "first rule consumed, then the persistent one")
    status, body = ctx.c.json("DELETE", "/_test/faults")
    eq(status, 200, "DELETE /_test/faults")
    eq(ctx.c.publish([event()])[0], 200, "cleared")


@test
def fault_rules_match_their_event_type_only(ctx):
    post_fault(ctx.c, {"status": 404, "event_type": "other.type"})
    eq(ctx.c.publish([event()])[0], 200, "rule for another event type")
    eq(ctx.c.publish([event()], event_type="other.type")[0], 404, "rule's own event type")


@test
def partial_fault_answers_207_and_stores_the_submitted(ctx):
    evs = [event() for _ in range(5)]
    post_fault(ctx.c, {"partial": {"fail_every": 2}, "times": 1})
    status, headers, data = ctx.c.publish(evs)
    eq(status, 207, "partial")
    eq(headers.get("content-type"), "application/json", "207 content type")
    items = json.loads(data)
    eq([i["eid"] for i in items], [e["metadata"]["eid"] for e in evs], "item eids in order")
    eq([i["publishing_status"] for i in items], ["failed", "submitted", "failed", "submitted", "failed"], "statuses")
    check(all(i["step"] == "publishing" for i in items), "step publishing")
    check(all(i.get("detail") for i in items if i["publishing_status"] == "failed"), "failed items have a detail")
    stored = json.loads(events_of(ctx.c))["events"]
    eq(stored, [evs[1], evs[3]], "only submitted events stored")
    # Re-sending the failed ones (as the relay does) works once the rule is used up.
    status, _, _ = ctx.c.publish([evs[0], evs[2], evs[4]])
    eq(status, 200, "re-send")
    eq(count_of(ctx.c), 5, "all stored")
    post_fault(ctx.c, {"partial": {"fail_every": 1}, "times": 1})
    status, _, data = ctx.c.publish([event(), event()])
    eq(status, 207, "fail_every 1")
    eq([i["publishing_status"] for i in json.loads(data)], ["failed", "failed"], "all failed")
    eq(count_of(ctx.c), 5, "nothing more stored")


@test
def reject_eids_fault_answers_422_items(ctx):
    bad = event()
    post_fault(ctx.c, {"reject_eids": [bad["metadata"]["eid"]]})
    for attempt in range(2):  # persistent without times
        others = [event(), event()]
        status, _, data = ctx.c.publish([others[0], bad, others[1]])
        eq(status, 422, f"attempt {attempt}")
        items = json.loads(data)
        eq(
            [(i["eid"], i["publishing_status"]) for i in items],
            [(others[0]["metadata"]["eid"], "aborted"), (bad["metadata"]["eid"], "failed"), (others[1]["metadata"]["eid"], "aborted")],
            "items",
        )
        eq(items[1]["detail"], "rejected by test rule", "detail")
        eq(items[1]["step"], "validating", "step")
    eq(count_of(ctx.c), 0, "nothing stored")
    eq(ctx.c.publish([event(), event()])[0], 200, "batches without the eid pass")
    eq(len(ctx.c.json("GET", "/_test/faults")[1]), 1, "rule still there")
    post_fault(ctx.c, {"status": 500, "times": 1})
    # The reject rule comes first but does not match this batch: the next rule does.
    eq(ctx.c.publish([event()])[0], 500, "non-matching reject rule is skipped")


@test
def latency_fault_delays_the_answer(ctx):
    post_fault(ctx.c, {"latency_ms": 400, "times": 1})
    t0 = time.monotonic()
    status, _, _ = ctx.c.publish([event()])
    elapsed = time.monotonic() - t0
    eq(status, 200, "latency alone answers normally")
    check(elapsed >= 0.4, f"took {elapsed:.3f}s")
    post_fault(ctx.c, {"latency_ms": 300, "status": 504, "times": 1})
    t0 = time.monotonic()
    status, _, _ = ctx.c.publish([event()])
    elapsed = time.monotonic() - t0
    eq(status, 504, "latency with status")
    check(elapsed >= 0.3, f"took {elapsed:.3f}s")
    t0 = time.monotonic()
    ctx.c.publish([event()])
    check(time.monotonic() - t0 < 0.3, "consumed")


@test
def drop_connection_fault_closes_without_an_answer(ctx):
    post_fault(ctx.c, {"drop_connection": True, "times": 1})
    c = Client(ctx.plain.port)
    try:
        c.publish([event()])
        raise AssertionError("expected the connection to be dropped")
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        pass
    finally:
        c.close()
    eq(ctx.c.publish([event()])[0], 200, "next request")
    reqs = requests_of(ctx.c)
    eq(reqs[0]["status"], None, "dropped request has no status")
    eq(reqs[0]["fault"], {"drop_connection": True}, "fault recorded")
    eq(count_of(ctx.c), 1, "dropped batch not stored")


def raw_publish(port, body: bytes, timeout: float) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(
        (f"POST /event-types/{ET}/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
         f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    )
    return s


@test
def hang_fault_never_answers_until_faults_are_cleared(ctx):
    post_fault(ctx.c, {"hang": True})
    sockets = [raw_publish(ctx.plain.port, json.dumps([event()]).encode(), 0.5) for _ in range(2)]
    for s in sockets:
        try:
            data = s.recv(1024)
            raise AssertionError(f"expected no answer, got {data!r}")
        except socket.timeout:
            pass
    # Other work goes on meanwhile.
    eq(ctx.c.json("GET", "/_test/health")[0], 200, "health while hanging")
    eq([r["status"] for r in requests_of(ctx.c)], [None, None], "hanging requests recorded without status")
    ctx.c.json("DELETE", "/_test/faults")
    for s in sockets:
        s.settimeout(5)
        eq(s.recv(1024), b"", "released: closed without an answer")
        s.close()
    eq(ctx.c.publish([event()])[0], 200, "after release")
    eq(count_of(ctx.c), 1, "hung batches not stored")
    # reset releases too
    post_fault(ctx.c, {"hang": True, "times": 1})
    s = raw_publish(ctx.plain.port, json.dumps([event()]).encode(), 5)
    time.sleep(0.2)
    ctx.c.request("POST", "/_test/reset")
    eq(s.recv(1024), b"", "released by reset")
    s.close()


@test
def bad_fault_rules_are_refused(ctx):
    bad_rules = [
        {"stauts": 503},
        {"status": 200},
        {"status": "503"},
        {"status": 503, "times": 0},
        {"status": 503, "partial": {"fail_every": 2}},
        {"partial": {"fail_every": 0}},
        {"reject_eids": "x"},
        {"latency_ms": -1},
        {"retry_after": "1"},
        {"drop_connection": False},
        {},
        "x",
    ]
    for rule in bad_rules:
        status, headers, data = ctx.c.request("POST", "/_test/faults", json.dumps(rule))
        expect_problem(status, headers, data, 400, f"rule {rule!r}")
    status, headers, data = ctx.c.request("POST", "/_test/faults", b"{not json")
    expect_problem(status, headers, data, 400, "not JSON")
    eq(ctx.c.json("GET", "/_test/faults")[1], [], "nothing added")
    eq(post_fault(ctx.c, [{"status": 500, "times": 1}, {"latency_ms": 1}]), {"faults": 2}, "list appended")


# ---- control API -----------------------------------------------------------------


@test
def requests_log_has_every_field(ctx):
    evs = [event(), event()]
    ctx.c.publish(evs, flow_id="flow-1", gzipped=True, event_type="a.type")
    ctx.c.publish([event()], event_type="b.type")
    reqs = requests_of(ctx.c)
    eq(
        reqs[0],
        {
            "seq": 1,
            "event_type": "a.type",
            "status": 200,
            "events": 2,
            "eids": [e["metadata"]["eid"] for e in evs],
            "flow_id": "flow-1",
            "gzip": True,
            "authorization": "missing",
            "fault": None,
        },
        "request record",
    )
    eq([r["seq"] for r in requests_of(ctx.c, "?event_type=b.type")], [2], "filter")


@test
def events_can_be_filtered_and_paged(ctx):
    a = [event() for _ in range(3)]
    b = [event() for _ in range(2)]
    ctx.c.publish(a[:2], event_type="a.type")
    ctx.c.publish(b, event_type="b.type")
    ctx.c.publish(a[2:], event_type="a.type")
    eq(json.loads(events_of(ctx.c, "?event_type=a.type"))["events"], a, "a.type")
    eq(json.loads(events_of(ctx.c, "?event_type=b.type"))["events"], b, "b.type")
    page = json.loads(events_of(ctx.c, "?offset=1&limit=2"))
    eq(page, {"count": 5, "events": [a[1], b[0]]}, "paged")
    eq(json.loads(events_of(ctx.c, "?limit=0")), {"count": 5, "events": []}, "count only")
    eq(count_of(ctx.c, "?event_type=nope"), 0, "unknown type")
    status, headers, data = ctx.c.request("GET", "/_test/events?limit=x")
    expect_problem(status, headers, data, 400, "bad limit")


@test
def reset_forgets_everything(ctx):
    post_fault(ctx.c, {"status": 500})
    ctx.c.publish([event()])
    ctx.c.json("DELETE", "/_test/faults")
    ctx.c.publish([event()])
    post_fault(ctx.c, {"status": 500})
    status, _ = ctx.c.json("POST", "/_test/reset")
    eq(status, 200, "reset")
    eq(count_of(ctx.c), 0, "events")
    eq(requests_of(ctx.c), [], "requests")
    eq(ctx.c.json("GET", "/_test/faults")[1], [], "faults")
    ctx.c.publish([event()])
    eq(requests_of(ctx.c)[0]["seq"], 1, "seq restarts")


@test
def unknown_routes_and_methods(ctx):
    status, headers, data = ctx.c.request("GET", "/nope")
    expect_problem(status, headers, data, 404, "unknown path")
    status, headers, data = ctx.c.request("GET", f"/event-types/{ET}/events")
    expect_problem(status, headers, data, 405, "GET on the publishing path")
    status, headers, data = ctx.c.request("PUT", f"/event-types/{ET}", b"{}")
    expect_problem(status, headers, data, 405, "PUT of an event type")
    status, headers, data = ctx.c.request("POST", "/_test/token", b'{"tok": 1}')
    expect_problem(status, headers, data, 400, "bad token body")


@test
def concurrent_keep_alive_clients(ctx):
    threads, per_thread, batch = 16, 20, 10
    errors: list = []
    sent: list = []
    lock = threading.Lock()

    def worker():
        c = Client(ctx.plain.port)
        try:
            for _ in range(per_thread):
                evs = [event() for _ in range(batch)]
                status, _, data = c.publish(evs, gzipped=True)
                if status != 200:
                    errors.append((status, data))
                with lock:
                    sent.extend(e["metadata"]["eid"] for e in evs)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
        finally:
            c.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    eq(errors, [], "errors")
    stored = json.loads(events_of(ctx.c))["events"]
    eq(len(stored), threads * per_thread * batch, "stored")
    eq(sorted(e["metadata"]["eid"] for e in stored), sorted(sent), "every eid once")
    eq(sorted(r["seq"] for r in requests_of(ctx.c)), list(range(1, threads * per_thread + 1)), "seq unique")


# ---- token -----------------------------------------------------------------------


@test
def bearer_token_is_checked(ctx):
    a = ctx.a
    status, headers, data = a.publish([event()])
    problem = expect_problem(status, headers, data, 401, "missing token")
    check(TOKEN not in problem["detail"], "token not echoed")
    status, headers, data = a.publish([event()], token="wrong")
    expect_problem(status, headers, data, 401, "wrong token")
    status, _, _ = a.request("POST", f"/event-types/{ET}/events", json.dumps([event()]), {"Authorization": TOKEN})
    eq(status, 401, "token without the Bearer scheme")
    eq(a.publish([event()], token=TOKEN)[0], 200, "right token")
    status, _, _ = a.request(
        "POST", f"/event-types/{ET}/events", json.dumps([event()]), {"Authorization": f"bearer {TOKEN}"}
    )
    eq(status, 200, "scheme is case-insensitive")
    eq(count_of(a), 2, "only authorised batches stored")
    reqs_text = a.request("GET", "/_test/requests")[2].decode()
    check(TOKEN not in reqs_text, "the token never appears in /_test/requests")
    eq([r["authorization"] for r in json.loads(reqs_text)], ["missing", "wrong", "wrong", "ok", "ok"], "authorization")
    eq([r["status"] for r in json.loads(reqs_text)], [401, 401, 401, 200, 200], "statuses")


@test
def token_can_be_changed_and_disabled(ctx):
    a = ctx.a
    eq(a.json("POST", "/_test/token", {"token": "rotated"})[0], 200, "set token")
    eq(a.publish([event()], token=TOKEN)[0], 401, "old token")
    eq(a.publish([event()], token="rotated")[0], 200, "new token")
    eq(a.json("POST", "/_test/token", {"token": None})[0], 200, "disable")
    eq(a.publish([event()])[0], 200, "no header, no check")
    eq(a.publish([event()], token="anything")[0], 200, "any header, no check")
    eq([r["authorization"] for r in requests_of(a)], ["wrong", "ok", "missing", "unchecked"], "authorization")
    eq(a.json("POST", "/_test/token", {"token": TOKEN})[0], 200, "restore")
    eq(a.publish([event()])[0], 401, "checked again")


# ---- event types -----------------------------------------------------------------


def definition(name=ET, **fields):
    return {
        "name": name,
        "owning_application": "stups_orders",
        "category": "data",
        "enrichment_strategies": ["metadata_enrichment"],
        "schema": {"type": "json_schema", "schema": "{}"},
        **fields,
    }


def register(client, body):
    return client.json("POST", "/_test/event-types", body)


@test
def registered_event_types_are_served_with_nakadis_defaults(ctx):
    c = ctx.c
    eq(register(c, definition()), (200, {"event_types": 1}), "register")
    status, body = c.json("GET", f"/event-types/{ET}")
    eq(status, 200, "GET a registered event type")
    eq(body, {**definition(), "partition_strategy": "random", "compatibility_mode": "forward",
              "cleanup_policy": "delete"}, "definition with the spec's defaults")

    hashed = definition(partition_strategy="hash", partition_key_fields=["item.pk"], cleanup_policy="compact")
    eq(register(c, hashed), (200, {"event_types": 1}), "registering again replaces")
    status, body = c.json("GET", f"/event-types/{ET}")
    eq((body["partition_strategy"], body["partition_key_fields"], body["cleanup_policy"]),
       ("hash", ["item.pk"], "compact"), "what the definition says wins over a default")

    eq(register(c, definition("a-b_c.d-e"))[0], 200, "a name with every allowed character")
    eq(c.json("GET", "/event-types/a%2Db_c.d-e")[0], 200, "a percent-encoded name")

    status, headers, data = c.request("GET", "/event-types/payments.unknown")
    problem = expect_problem(status, headers, data, 404, "an unknown event type")
    check("payments.unknown" in problem["detail"], f"the detail names it: {problem}")

    eq(c.json("DELETE", "/_test/event-types"), (200, {"event_types": 0}), "forget them")
    eq(c.request("GET", f"/event-types/{ET}")[0], 404, "forgotten")
    register(c, definition())
    c.json("POST", "/_test/reset")
    eq(c.request("GET", f"/event-types/{ET}")[0], 404, "reset forgets them too")


@test
def event_type_registration_is_checked(ctx):
    for body, what in [
        ([definition()], "not an object"),
        ({"category": "data"}, "no name"),
        (definition("1starts.with-a-digit"), "a name the spec's pattern refuses"),
        (definition("has/slash"), "a slash in the name"),
        ({"name": ET}, "no category"),
        (definition(category="transactions"), "an unknown category"),
    ]:
        status, headers, data = ctx.c.request("POST", "/_test/event-types", body)
        expect_problem(status, headers, data, 400, what)
    eq(ctx.c.request("GET", f"/event-types/{ET}")[0], 404, "nothing registered")


@test
def reading_an_event_type_needs_the_token(ctx):
    a = ctx.a
    register(a, definition())
    status, headers, data = a.request("GET", f"/event-types/{ET}")
    problem = expect_problem(status, headers, data, 401, "no token")
    check(TOKEN not in problem["detail"], "token not echoed")
    status, headers, data = a.request("GET", f"/event-types/{ET}", headers={"Authorization": "Bearer wrong"})
    expect_problem(status, headers, data, 401, "wrong token")
    status, headers, data = a.request("GET", "/event-types/payments.unknown", headers={"Authorization": "Bearer wrong"})
    expect_problem(status, headers, data, 401, "the token is checked before the name")
    status, _, data = a.request("GET", f"/event-types/{ET}", headers={"Authorization": f"Bearer {TOKEN}"})
    eq(status, 200, "right token")
    eq(json.loads(data)["name"], ET, "the definition")
    eq(a.request("GET", "/event-types/payments.unknown", headers={"Authorization": f"Bearer {TOKEN}"})[0], 404,
       "an unknown name with the right token")
    eq(requests_of(a), [], "reading event types is not a publishing request")


@test
def fault_rules_leave_reading_event_types_alone(ctx):
    register(ctx.c, definition())
    post_fault(ctx.c, {"status": 503})
    eq(ctx.c.request("GET", f"/event-types/{ET}")[0], 200, "read despite a persistent 503 rule")
    eq(ctx.c.json("GET", "/_test/faults")[1], [{"status": 503}], "the rule is not consumed")


@test
def explicit_schema_path_validates_too(ctx):
    status, _, data = ctx.a.publish([with_(event(), "X", "data_op")], token=TOKEN)
    eq(status, 422, "invalid event on the --schema server")


# ---- --no-validate -----------------------------------------------------------------


@test
def no_validate_skips_the_schema_only(ctx):
    f = ctx.f
    raw = '[{"anything": 1E+125, "metadata": {"eid": "not-a-uuid"}}]'
    eq(f.publish(None, raw=raw)[0], 200, "schema not checked")
    eq(events_of(f), '{"count":1,"events":[{"anything": 1E+125, "metadata": {"eid": "not-a-uuid"}}]}', "exact text")
    eq(requests_of(f)[0]["eids"], ["not-a-uuid"], "eid still recorded")
    # The size limit (300 here) and metadata.event_type still apply.
    status, _, data = f.publish([{"metadata": {"event_type": "other"}}])
    eq(status, 422, "event_type mismatch")
    status, _, data = f.publish([{"x": "y" * 300}])
    eq(status, 422, "too large")
    check("too large" in json.loads(data)[0]["detail"], data)
    eq(f.publish(None, raw="[NaN]")[0], 400, "still strict JSON")
    post_fault(f, {"status": 503, "times": 1})
    eq(f.publish([{}])[0], 503, "faults work")
    time.sleep(0.1)
    check(any("POST /event-types/" in line for line in ctx.fast.stderr), "--verbose logs requests to stderr")
    check(not any("POST /event-types/" in line for line in ctx.plain.stderr), "quiet without --verbose")


# ---- benchmark ---------------------------------------------------------------------


def bench_event(i: int) -> dict:
    item = {
        "pk": f"order-{i:08d}",
        "sk": "v0",
        "status": "paid",
        "amount": 1234.56,
        "currency": "EUR",
        "customer": {"id": f"cust-{i % 9973}", "email": f"user{i}@example.com", "tier": "gold"},
        "lines": [{"sku": f"SKU-{i % 1000}-{j}", "qty": j + 1, "price": 19.99} for j in range(4)],
        "tags": ["eu", "web", "express"],
        "note": "x" * 150,
    }
    patch = [
        {"op": "replace", "path": "/status", "value": "paid"},
        {"op": "add", "path": "/lines/3", "value": item["lines"][3]},
        {"op": "remove", "path": "/coupon"},
    ]
    return event(item=item, patch=patch, partition_compaction_key=item["pk"])


def bench(requests_n=50, batch=1000, connections=(1, 4)):
    bodies = []
    for r in range(requests_n):
        bodies.append(json.dumps([bench_event(r * batch + i) for i in range(batch)]).encode())
    size = len(bodies[0]) / batch
    print(f"bench: {requests_n} requests x {batch} events, {size:.0f} bytes/event")
    for args, label in (((), "validating"), (("--no-validate",), "--no-validate")):
        for conns in connections:
            for gz in (False, True):
                server = ServerProcess(*args)
                try:
                    payloads = [gzip.compress(b, 1) if gz else b for b in bodies]
                    headers = {"Content-Type": "application/json"}
                    if gz:
                        headers["Content-Encoding"] = "gzip"
                    queue = list(range(requests_n))
                    lock = threading.Lock()
                    fails = []

                    def worker():
                        c = Client(server.port, timeout=120)
                        while True:
                            with lock:
                                if not queue:
                                    break
                                k = queue.pop()
                            status, _, _ = c.request("POST", f"/event-types/{ET}/events", payloads[k], headers)
                            if status != 200:
                                fails.append(status)
                        c.close()

                    t0 = time.perf_counter()
                    ts = [threading.Thread(target=worker) for _ in range(conns)]
                    for t in ts:
                        t.start()
                    for t in ts:
                        t.join()
                    dt = time.perf_counter() - t0
                    check(not fails, f"bench failures {fails[:5]}")
                    check(count_of(Client(server.port), "?limit=0") == requests_n * batch, "bench: all stored")
                    print(
                        f"  {label:14s} connections={conns} gzip={str(gz):5s} "
                        f"{requests_n * batch / dt:9.0f} events/s  ({dt:.2f}s)"
                    )
                finally:
                    server.stop()


# ---- runner ------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-k", default=None, help="run only tests whose name contains this")
    parser.add_argument("--bench", action="store_true", help="also measure events/s")
    args = parser.parse_args()

    passed = failed = 0
    try:
        ctx = Ctx()
    except Exception:
        traceback.print_exc()
        print("0 passed, 1 failed (servers did not start)")
        return 1
    try:
        for fn in TESTS:
            if args.k and args.k not in fn.__name__:
                continue
            try:
                ctx.reset()
                fn(ctx)
                passed += 1
                print(f"ok   {fn.__name__}")
            except Exception:
                failed += 1
                print(f"FAIL {fn.__name__}")
                traceback.print_exc(file=sys.stdout)
                # A failed test may leave a connection mid-request.
                for name in ("c", "a", "f"):
                    getattr(ctx, name).close()
        if args.bench:
            try:
                bench()
                passed += 1
            except Exception:
                failed += 1
                traceback.print_exc(file=sys.stdout)
    finally:
        ctx.stop()
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
