#!/usr/bin/env python3
"""Nakadi test server: the publishing endpoint of Nakadi, with scripted faults,
and the event types tests register (read by the relay's `check` command).

Why this exists: the relay's whole delivery contract (checkpoint on 200, re-send
on 207, DLQ on 422 items, retries on 5xx/429/timeouts, token re-read on 401) is
decided by how Nakadi answers `POST /event-types/{name}/events`. This server
answers the way the Nakadi API spec describes, validates every event against
the project's own JSON Schema of the data change event envelope, keeps each
accepted event as the exact JSON text it received (numbers with 38 digits or
exponents such as 1E+125 stay exactly as sent) and lets tests script failures.

CLI:
  nakadi_server.py --port 0 [--host 127.0.0.1] [--token TOKEN] [--schema PATH]
                   [--no-validate] [--max-event-bytes 999000] [--verbose]
                   [--validator compiled|jsonschema]
  The first stdout line is exactly `LISTENING <port>`; nothing else goes to
  stdout. The schema defaults to ../schema/data-change-event.schema.json.
  --no-validate skips only the JSON Schema check (for benchmarks); the size
  limit and the metadata.event_type check stay, they cost next to nothing.
  Events are checked with the schema compiled to plain closures (about 40x
  faster than jsonschema; see "schema check" below); jsonschema checks the
  schema file at start and words the details of every rejection.
  --validator jsonschema uses jsonschema alone (slow; the reference).

Publishing (Nakadi semantics):
  POST /event-types/{name}/events   body: JSON array of events, optionally
  `Content-Encoding: gzip`; `X-Flow-Id` is recorded (and echoed back).
    401 Problem   a token is configured and `Authorization: Bearer <token>`
                  is missing or wrong
    400 Problem   the body is not a JSON array (or not JSON, or bad gzip)
    422 items     any event is invalid (schema, metadata.event_type differs
                  from {name}, or more than --max-event-bytes bytes of its own
                  JSON text as received): one BatchItemResponse per event, the
                  invalid ones `failed`/`validating`, the rest `aborted`/`none`;
                  nothing of the batch is stored
    200 (empty)   every event stored
  Problems are `application/problem+json` {type, title, status, detail}.

Event types (the schema registry, read only):
  GET /event-types/{name}   200 with the definition a test registered, with
                            Nakadi's defaults for what it left out
                            (partition_strategy random, compatibility_mode
                            forward, cleanup_policy delete); 404 Problem for
                            a name never registered; 401 Problem when a token
                            is configured and missing or wrong, as publishing.
                            Fault rules do not apply. Other methods: 405.

Scripted faults, checked per publishing request in order; the first rule that
matches is applied and, if it has `times`, consumed (whatever the outcome).
Optional `event_type` restricts a rule to one event type. Rule outcomes (at
most one per rule; `latency_ms` combines with any of them):
  {"status": 503, "times": 3, "retry_after": "2"}   Problem with that status
        (any 4xx/5xx; a 422 here is a Problem object, not an item array),
        `Retry-After` header when retry_after is given
  {"partial": {"fail_every": 2}, "times": 1}   207: events with
        index % fail_every == 0 `failed` (step publishing), the rest
        `submitted` and stored
  {"reject_eids": ["..."]}   matches only batches containing one of these
        eids: 422 items, those eids `failed` ("rejected by test rule"), the
        others `aborted`; nothing stored
  {"latency_ms": 1500}       sleep, then handle the request
  {"drop_connection": true}  close the socket without any response
  {"hang": true}             never answer, until the faults are cleared
                             (DELETE /_test/faults, /_test/reset)
  Order of handling: faults (latency, drop, hang, status) before the token
  check, then body, validation (+ reject_eids), partial, store.

Control API (JSON):
  POST   /_test/faults     one rule or a list of rules, appended -> {"faults": n}
  GET    /_test/faults     the rules still active, with remaining `times`
  DELETE /_test/faults     clear them (and release hung requests)
  GET    /_test/events     {"count": N, "events": [<raw event text>, ...]} in
                           arrival order; ?event_type=X filters; ?offset=&limit=
                           page (count stays the total); ?meta=1 wraps each
                           event as {"seq","event_type","eid","flow_id",
                           "received_at","received_epoch","event": <raw>};
                           received_epoch is the same instant in Unix seconds
                           with microseconds, for latency measurements
  GET    /_test/requests   [{"seq","event_type","status","events","eids",
                           "flow_id","gzip","authorization","fault"}] where
                           authorization is ok|missing|wrong, or "unchecked"
                           when no token is configured and one was sent; status
                           is null for dropped or hanging requests; ?event_type=X
  POST   /_test/token      {"token": "new"} or {"token": null} (no check)
  POST   /_test/event-types  an EventType definition (an object with at least
                           `name`, matching the spec's pattern, and `category`
                           undefined|data|business), served from then on by
                           GET /event-types/{name}; registering a name again
                           replaces it -> {"event_types": n}
  DELETE /_test/event-types  forget every registered definition
  POST   /_test/reset      forget events, requests, faults and registered
                           event types; seq restarts at 1
  GET    /_test/health     200 {"status": "ok"}

Standard library plus `jsonschema` (only needed without --no-validate).
"""

from __future__ import annotations

import argparse
import decimal
import gzip
import hmac
import json
import re
import sys
import threading
import time
import traceback
import zlib
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_SCHEMA = Path(__file__).resolve().parent.parent / "schema" / "data-change-event.schema.json"
# Nakadi's default `nakadi.event.max.bytes`.
DEFAULT_MAX_EVENT_BYTES = 999_000
PUBLISH_PATH = re.compile(r"^/event-types/([^/]+)/events$")
EVENT_TYPE_PATH = re.compile(r"^/event-types/([^/]+)$")
# EventType.name in the spec.
EVENT_TYPE_NAME = re.compile(r"[a-zA-Z][-0-9a-zA-Z_]*(\.[0-9a-zA-Z][-0-9a-zA-Z_]*)*")
EVENT_TYPE_CATEGORIES = ("undefined", "data", "business")
# The spec's `default:` of EventType fields, which Nakadi fills in when a definition leaves them out.
EVENT_TYPE_DEFAULTS = {"partition_strategy": "random", "compatibility_mode": "forward", "cleanup_policy": "delete"}
# JSON's insignificant whitespace (RFC 8259 section 2), not Python's \s.
JSON_WS = re.compile(r"[ \t\n\r]*")
PROBLEM = "application/problem+json"
JSON_TYPE = "application/json"
# Details quote the offending value; a whole event in a detail helps nobody.
MAX_DETAIL_CHARS = 1000
# pattern -> name of the schema's $defs entry that holds it, so a detail says
# "is not a valid uuid" instead of quoting a long regular expression.
PATTERN_NAMES: dict[str, str] = {}

RULE_OUTCOMES = ("status", "partial", "reject_eids", "drop_connection", "hang")
RULE_KEYS = set(RULE_OUTCOMES) | {"event_type", "times", "retry_after", "latency_ms"}


class BadBody(Exception):
    """The request body is not a JSON array: a 400, not a 422."""


class ClientError(Exception):
    """A bad control API call: answered with a 400 Problem."""


def _no_constants(name: str):
    # Python's json accepts NaN and Infinity; JSON (and Nakadi) does not.
    raise ValueError(f"{name} is not valid JSON")


# Numbers are parsed as Decimal for validation so nothing is rounded even in
# the parsed copy; the stored copy is the original text anyway.
EXACT_DECODER = json.JSONDecoder(parse_float=decimal.Decimal, parse_constant=_no_constants)
FAST_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def split_array(text: str, decoder: json.JSONDecoder) -> list[tuple[int, int, object]]:
    """Parses a JSON array, returning (start, end, value) per element.

    raw_decode gives each element's end offset, so the caller can keep the
    element's exact text (text[start:end]) next to the parsed value in one pass.
    """
    n = len(text)
    i = JSON_WS.match(text, 0).end()
    if i >= n or text[i] != "[":
        raise BadBody("the body must be a JSON array of events")
    i = JSON_WS.match(text, i + 1).end()
    out = []
    if i < n and text[i] == "]":
        i += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, i)
            except (ValueError, RecursionError) as e:
                raise BadBody(f"malformed JSON at character {i}: {e}") from None
            out.append((i, end, value))
            i = JSON_WS.match(text, end).end()
            if i < n and text[i] == ",":
                i = JSON_WS.match(text, i + 1).end()
                continue
            if i < n and text[i] == "]":
                i += 1
                break
            raise BadBody(f"malformed JSON: expected ',' or ']' at character {i}")
    if JSON_WS.match(text, i).end() != n:
        raise BadBody(f"malformed JSON: unexpected data after the array at character {i}")
    return out


def eid_of(value) -> str | None:
    if isinstance(value, dict):
        metadata = value.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("eid"), str):
            return metadata["eid"]
    return None


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def short(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."


def describe_errors(errors) -> str:
    """All schema violations of one event, most specific location first: one
    failed item often has several mistakes, and the test wants to see them."""
    parts = []
    for error in sorted(errors, key=lambda e: (e.json_path, e.message)):
        schema = error.schema if isinstance(error.schema, dict) else {}
        forbidden = schema.get("not", {}).get("required") if error.validator == "not" else None
        if isinstance(forbidden, list):
            # The generic message repeats the whole metadata object.
            message = f"{', '.join(forbidden)} must not be set by the producer (Nakadi enriches it)"
        elif error.validator == "pattern" and error.validator_value in PATTERN_NAMES:
            message = f"{short(repr(error.instance))} is not a valid {PATTERN_NAMES[error.validator_value]}"
        else:
            message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
        parts.append(f"{error.json_path}: {message}")
    return short("schema violation: " + "; ".join(parts))


def parse_rule(rule) -> dict:
    """Checks a fault rule up front: a typo must fail the test that posts it,
    not silently turn into a rule that never fires."""
    if not isinstance(rule, dict):
        raise ValueError("a fault rule is a JSON object")
    unknown = set(rule) - RULE_KEYS
    if unknown:
        raise ValueError(f"unknown rule fields {sorted(unknown)}; known: {sorted(RULE_KEYS)}")
    outcomes = [k for k in RULE_OUTCOMES if k in rule]
    if len(outcomes) > 1:
        raise ValueError(f"a rule has at most one of {list(RULE_OUTCOMES)}, got {outcomes}")
    if not outcomes and "latency_ms" not in rule:
        raise ValueError(f"a rule needs one of {list(RULE_OUTCOMES)} or latency_ms")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if "event_type" in rule and not isinstance(rule["event_type"], str):
        raise ValueError("event_type must be a string")
    if "times" in rule and not (is_int(rule["times"]) and rule["times"] >= 1):
        raise ValueError("times must be an integer >= 1 (leave it out for a persistent rule)")
    if "status" in rule and not (is_int(rule["status"]) and 400 <= rule["status"] <= 599):
        raise ValueError("status must be an integer from 400 to 599")
    if "retry_after" in rule:
        if "status" not in rule:
            raise ValueError("retry_after goes with status")
        if not isinstance(rule["retry_after"], (str, int)) or isinstance(rule["retry_after"], bool):
            raise ValueError("retry_after must be a string or an integer")
        rule["retry_after"] = str(rule["retry_after"])
    if "partial" in rule:
        p = rule["partial"]
        if not (isinstance(p, dict) and set(p) == {"fail_every"} and is_int(p["fail_every"]) and p["fail_every"] >= 1):
            raise ValueError('partial must be {"fail_every": <integer >= 1>}')
    if "reject_eids" in rule:
        r = rule["reject_eids"]
        if not (isinstance(r, list) and r and all(isinstance(e, str) for e in r)):
            raise ValueError("reject_eids must be a non-empty list of strings")
    if "latency_ms" in rule:
        v = rule["latency_ms"]
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
            raise ValueError("latency_ms must be a number >= 0")
    for k in ("drop_connection", "hang"):
        if k in rule and rule[k] is not True:
            raise ValueError(f"{k} must be true")
    return rule


class State:
    """Everything tests can observe or script; one lock guards it all (the
    work done under it is tiny, the parsing and validation happen outside)."""

    def __init__(self, token: str | None, max_event_bytes: int, validator, verbose: bool):
        self.lock = threading.Lock()
        self.token = token
        self.max_event_bytes = max_event_bytes
        self.validator = validator
        self.verbose = verbose
        self.decoder = EXACT_DECODER if validator is not None else FAST_DECODER
        self.seq = 0
        # (seq, event_type, raw_text, eid, flow_id, received_at)
        self.events: list[tuple] = []
        self.requests: list[dict] = []
        self.faults: list[dict] = []
        # name -> definition, as GET /event-types/{name} answers it
        self.event_types: dict[str, dict] = {}
        # Hung requests wait on this; clearing faults sets it and swaps in a
        # fresh one, so later hang rules hang again.
        self.release = threading.Event()

    def clear_faults(self):
        with self.lock:
            self.faults.clear()
            release, self.release = self.release, threading.Event()
        release.set()

    def take_rule(self, event_type: str, eids: list) -> dict | None:
        present = set(e for e in eids if e is not None)
        with self.lock:
            for i, rule in enumerate(self.faults):
                if rule.get("event_type", event_type) != event_type:
                    continue
                if "reject_eids" in rule and present.isdisjoint(rule["reject_eids"]):
                    continue
                applied = dict(rule)
                if "times" in rule:
                    rule["times"] -= 1
                    if rule["times"] == 0:
                        del self.faults[i]
                applied.pop("times", None)
                return applied
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nakadi-test-server"
    # Headers and body leave in one write at the end of each request; with
    # Nagle on, a separate small write can wait for the client's delayed ACK.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def version_string(self):
        return self.server_version

    @property
    def state(self) -> State:
        return self.server.state

    def log_message(self, format, *args):
        if self.state.verbose:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    # ---- plumbing -------------------------------------------------------

    def read_body(self) -> bytes:
        # Always read the whole body, whatever the answer: on a keep-alive
        # connection unread bytes would be taken for the next request.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length) if length else b""

    def send(self, status: int, body: bytes = b"", content_type: str | None = None, headers=()):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def send_json(self, status: int, obj, headers=()):
        self.send(status, json.dumps(obj, separators=(",", ":")).encode(), JSON_TYPE, headers)

    def send_problem(self, status: int, detail: str, headers=()):
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        problem = {"type": f"http://httpstatus.es/{status}", "title": title, "status": status, "detail": detail}
        self.send(status, json.dumps(problem).encode(), PROBLEM, headers)

    def dispatch(self, method: str):
        try:
            try:
                body = self.read_body()
            except (ValueError, OSError) as e:
                self.close_connection = True
                self.send_problem(400, f"unreadable request body: {e}")
                return
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            m = PUBLISH_PATH.match(url.path)
            if m:
                if method != "POST":
                    return self.send_problem(405, "publishing is POST /event-types/{name}/events")
                return self.publish(unquote(m.group(1)), body)
            m = EVENT_TYPE_PATH.match(url.path)
            if m:
                if method != "GET":
                    return self.send_problem(405, "this server only reads event types: GET /event-types/{name}")
                return self.get_event_type(unquote(m.group(1)))
            route = CONTROL.get((method, url.path))
            if route is None:
                return self.send_problem(404, f"no route for {method} {url.path}")
            route(self, body, query)
        except ClientError as e:
            self.send_problem(400, str(e))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            # A bug in this server: say so loudly instead of letting the
            # client see a dropped connection it might treat as a fault.
            traceback.print_exc()
            self.close_connection = True
            try:
                self.send_problem(500, "nakadi test server bug: " + short(traceback.format_exc()))
            except OSError:
                pass

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PUT(self):
        self.dispatch("PUT")

    # ---- publishing -----------------------------------------------------

    def authorization(self) -> str:
        header = self.headers.get("Authorization")
        token = self.state.token
        if header is None:
            return "missing"
        if token is None:
            return "unchecked"
        scheme, _, value = header.strip().partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
        return "ok" if ok else "wrong"

    def check_event(self, value, size: int, event_type: str) -> str | None:
        """Why this event would fail Nakadi's validating step, or None."""
        st = self.state
        if size > st.max_event_bytes:
            return f"event too large: {size} bytes, the limit is {st.max_event_bytes} bytes"
        if st.validator is not None:
            why = st.validator.why_invalid(value)
            if why is not None:
                return why
        if isinstance(value, dict) and isinstance(value.get("metadata"), dict):
            declared = value["metadata"].get("event_type")
            if declared is not None and declared != event_type:
                return short(f"metadata.event_type {declared!r} does not match the endpoint's event type {event_type!r}")
        return None

    def publish(self, event_type: str, raw: bytes):
        st = self.state
        received_at = time.time()
        flow_id = self.headers.get("X-Flow-Id")
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        echo = [("X-Flow-Id", flow_id)] if flow_id else []

        items: list = []
        text = ""
        ascii_only = True
        body_error = None
        try:
            if encoding in ("gzip", "x-gzip"):
                try:
                    raw = gzip.decompress(raw)
                except (OSError, EOFError, zlib.error) as e:
                    raise BadBody(f"Content-Encoding gzip, but the body is not gzip: {e}") from None
            elif encoding != "identity":
                raise BadBody(f"unsupported Content-Encoding {encoding!r}")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadBody(f"the body is not UTF-8: {e}") from None
            # For ASCII bodies character offsets are byte offsets: no need to
            # encode every event again just to measure it.
            ascii_only = raw.isascii()
            items = split_array(text, st.decoder)
        except BadBody as e:
            body_error = str(e)
            items = []
        eids = [eid_of(value) for _, _, value in items]

        record = {
            "seq": 0,
            "event_type": event_type,
            "status": None,
            "events": len(items),
            "eids": eids,
            "flow_id": flow_id,
            "gzip": encoding in ("gzip", "x-gzip"),
            "authorization": self.authorization(),
            "fault": None,
        }
        with st.lock:
            st.seq += 1
            seq = record["seq"] = st.seq
            st.requests.append(record)

        def answer(status, body=b"", content_type=None, headers=()):
            record["status"] = status
            self.send(status, body, content_type, list(headers) + echo)

        def answer_problem(status, detail, headers=()):
            record["status"] = status
            self.send_problem(status, detail, list(headers) + echo)

        # Taken before the rule: a DELETE /_test/faults racing with this
        # request then releases it instead of leaving it hung for good.
        release = st.release
        rule = st.take_rule(event_type, eids)
        if rule is not None:
            record["fault"] = rule
            if st.verbose:
                sys.stderr.write(f"request {seq}: applying fault rule {rule}\n")
            if rule.get("latency_ms"):
                time.sleep(rule["latency_ms"] / 1000.0)
            if rule.get("drop_connection"):
                # Nothing written; closing the socket makes the client see
                # the connection end before any response.
                self.close_connection = True
                return
            if rule.get("hang"):
                release.wait()
                self.close_connection = True
                return
            if "status" in rule:
                extra = [("Retry-After", rule["retry_after"])] if "retry_after" in rule else []
                return answer_problem(rule["status"], "injected by a test fault rule", extra)

        if st.token is not None and record["authorization"] != "ok":
            return answer_problem(401, f"Bearer token {record['authorization']}")
        if body_error is not None:
            return answer_problem(400, body_error)

        rejected = set(rule["reject_eids"]) if rule and "reject_eids" in rule else ()
        failures = []
        for (start, end, value), eid in zip(items, eids):
            size = end - start if ascii_only else len(text[start:end].encode("utf-8"))
            why = self.check_event(value, size, event_type)
            if why is None and eid in rejected:
                why = "rejected by test rule"
            failures.append(why)

        if any(failures):
            response = []
            for eid, why in zip(eids, failures):
                item = {"publishing_status": "failed", "step": "validating", "detail": why} if why else {
                    "publishing_status": "aborted",
                    "step": "none",
                    "detail": "aborted because another event of the batch failed",
                }
                if eid is not None:
                    item = {"eid": eid, **item}
                response.append(item)
            return answer(422, json.dumps(response).encode(), JSON_TYPE)

        keep = range(len(items))
        if rule and "partial" in rule:
            every = rule["partial"]["fail_every"]
            keep = [i for i in keep if i % every != 0]
        stored = [(seq, event_type, text[items[i][0] : items[i][1]], eids[i], flow_id, received_at) for i in keep]
        with st.lock:
            st.events.extend(stored)

        if rule and "partial" in rule:
            kept = set(keep)
            response = []
            for i, eid in enumerate(eids):
                if i in kept:
                    item = {"publishing_status": "submitted", "step": "publishing"}
                else:
                    item = {"publishing_status": "failed", "step": "publishing", "detail": "injected partial failure (test rule)"}
                if eid is not None:
                    item = {"eid": eid, **item}
                response.append(item)
            return answer(207, json.dumps(response).encode(), JSON_TYPE)
        return answer(200)

    # ---- event types ----------------------------------------------------

    def get_event_type(self, name: str):
        st = self.state
        authorization = self.authorization()
        if st.token is not None and authorization != "ok":
            return self.send_problem(401, f"Bearer token {authorization}")
        with st.lock:
            definition = st.event_types.get(name)
        if definition is None:
            return self.send_problem(404, f"EventType \"{name}\" does not exist.")
        self.send_json(200, definition)

    # ---- control API ----------------------------------------------------

    @staticmethod
    def read_json(body: bytes):
        try:
            return json.loads(body or b"null")
        except ValueError as e:
            raise ClientError(f"the body is not JSON: {e}") from None

    def post_faults(self, body, query):
        rules = self.read_json(body)
        rules = rules if isinstance(rules, list) else [rules]
        try:
            rules = [parse_rule(r) for r in rules]
        except ValueError as e:
            raise ClientError(str(e)) from None
        with self.state.lock:
            self.state.faults.extend(rules)
            n = len(self.state.faults)
        self.send_json(200, {"faults": n})

    def get_faults(self, body, query):
        with self.state.lock:
            self.send_json(200, self.state.faults)

    def delete_faults(self, body, query):
        self.state.clear_faults()
        self.send_json(200, {"faults": 0})

    def get_events(self, body, query):
        event_type = query.get("event_type")
        meta = query.get("meta", "0").lower() in ("1", "true", "yes")
        try:
            offset = int(query.get("offset", 0))
            limit = int(query["limit"]) if "limit" in query else None
        except ValueError:
            raise ClientError("offset and limit are integers") from None
        with self.state.lock:
            events = self.state.events if event_type is None else [e for e in self.state.events if e[1] == event_type]
            count = len(events)
            events = events[offset : None if limit is None else offset + limit]
        # Built as text so every event goes out exactly as it came in.
        if meta:
            parts = [
                '{"seq":%d,"event_type":%s,"eid":%s,"flow_id":%s,"received_at":"%s","received_epoch":%.6f,"event":%s}'
                % (seq, json.dumps(et), json.dumps(eid), json.dumps(flow), rfc3339(at), at, raw)
                for seq, et, raw, eid, flow, at in events
            ]
        else:
            parts = [e[2] for e in events]
        self.send(200, ('{"count":%d,"events":[%s]}' % (count, ",".join(parts))).encode("utf-8"), JSON_TYPE)

    def get_requests(self, body, query):
        event_type = query.get("event_type")
        with self.state.lock:
            requests = [r for r in self.state.requests if event_type is None or r["event_type"] == event_type]
            self.send_json(200, requests)

    def post_token(self, body, query):
        doc = self.read_json(body)
        if not (isinstance(doc, dict) and "token" in doc and (doc["token"] is None or isinstance(doc["token"], str))):
            raise ClientError('expected {"token": "<token>"} or {"token": null}')
        with self.state.lock:
            self.state.token = doc["token"]
        self.send_json(200, {"token_check": doc["token"] is not None})

    def post_event_type(self, body, query):
        definition = self.read_json(body)
        if not isinstance(definition, dict):
            raise ClientError("an event type definition is a JSON object")
        name = definition.get("name")
        if not (isinstance(name, str) and EVENT_TYPE_NAME.fullmatch(name)):
            raise ClientError(f"name must match {EVENT_TYPE_NAME.pattern}, got {name!r}")
        if definition.get("category") not in EVENT_TYPE_CATEGORIES:
            raise ClientError(f"category must be one of {list(EVENT_TYPE_CATEGORIES)}, got {definition.get('category')!r}")
        with self.state.lock:
            self.state.event_types[name] = {**EVENT_TYPE_DEFAULTS, **definition}
            n = len(self.state.event_types)
        self.send_json(200, {"event_types": n})

    def delete_event_types(self, body, query):
        with self.state.lock:
            self.state.event_types = {}
        self.send_json(200, {"event_types": 0})

    def post_reset(self, body, query):
        st = self.state
        st.clear_faults()
        with st.lock:
            st.events = []
            st.requests = []
            st.event_types = {}
            st.seq = 0
        self.send_json(200, {"reset": True})

    def get_health(self, body, query):
        self.send_json(200, {"status": "ok"})


CONTROL = {
    ("POST", "/_test/faults"): Handler.post_faults,
    ("GET", "/_test/faults"): Handler.get_faults,
    ("DELETE", "/_test/faults"): Handler.delete_faults,
    ("GET", "/_test/events"): Handler.get_events,
    ("GET", "/_test/requests"): Handler.get_requests,
    ("POST", "/_test/token"): Handler.post_token,
    ("POST", "/_test/event-types"): Handler.post_event_type,
    ("DELETE", "/_test/event-types"): Handler.delete_event_types,
    ("POST", "/_test/reset"): Handler.post_reset,
    ("GET", "/_test/health"): Handler.get_health,
}


class Server(ThreadingHTTPServer):
    daemon_threads = True  # hung and idle keep-alive connections must not block exit
    allow_reuse_address = True
    request_queue_size = 256  # benchmarks open many connections at once


# ---- schema check ------------------------------------------------------------
#
# jsonschema needs about 1.4 ms per event of ~1 KB (it re-creates validator
# objects and resolves $refs at every step), which caps this server at a few
# hundred events/s. Benchmarks need tens of thousands, so the schema is also
# compiled once into plain closures that return True/False. jsonschema stays the
# authority: it checks the schema at start and writes the details of every
# rejected event. The compiler implements only the keywords listed below and
# refuses any other, so a schema edit it cannot follow falls back to jsonschema
# instead of being checked wrongly.


class Unsupported(Exception):
    """The schema uses something the fast compiler does not implement."""


# Keywords that never change the outcome (format is an annotation in 2020-12
# unless a validator opts in; our schema enforces formats with patterns).
ANNOTATIONS = {"$schema", "$id", "$comment", "$defs", "title", "description", "format", "examples", "default",
               "readOnly", "writeOnly", "deprecated"}

def _is_integer(x) -> bool:
    # JSON Schema: any number with a zero fractional part, 1.0 included.
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    if isinstance(x, float):
        return x.is_integer()
    if isinstance(x, decimal.Decimal):
        return x.is_finite() and x == x.to_integral_value()
    return False


JSON_TYPES = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "null": lambda x: x is None,
    "boolean": lambda x: isinstance(x, bool),
    "number": lambda x: isinstance(x, (int, float, decimal.Decimal)) and not isinstance(x, bool),
    "integer": _is_integer,
}


def json_equal(a, b) -> bool:
    """JSON equality: 1 == 1.0, but true != 1 (Python says True == 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return a == b


def _always(x):
    return True


def _never(x):
    return False


def compile_schema(root: dict):
    """Returns check(instance) -> bool for a draft 2020-12 schema, or raises
    Unsupported."""
    refs: dict[str, list] = {}

    def resolve(ref: str):
        if not ref.startswith("#"):
            raise Unsupported(f"$ref {ref!r}: only references inside the schema are supported")
        if ref not in refs:
            cell = refs[ref] = [None]  # filled below; recursion sees the cell
            target = root
            for part in filter(None, ref[1:].split("/")):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target[int(part)] if isinstance(target, list) else target[part]
            cell[0] = build(target)
        cell = refs[ref]
        return lambda x: cell[0](x)

    def build(schema):
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, dict):
            raise Unsupported(f"schema {schema!r}")
        unknown = set(schema) - ANNOTATIONS - {"type", "enum", "const", "pattern", "minLength", "maxLength", "properties",
                                               "required", "additionalProperties", "items", "allOf", "anyOf", "oneOf",
                                               "not", "if", "then", "else", "$ref"}
        if unknown:
            raise Unsupported(f"keywords {sorted(unknown)}")
        checks = []
        if "$ref" in schema:
            checks.append(resolve(schema["$ref"]))
        if "type" in schema:
            names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            tests = [JSON_TYPES[n] for n in names]
            checks.append(tests[0] if len(tests) == 1 else (lambda x, tests=tests: any(t(x) for t in tests)))
        if "enum" in schema or "const" in schema:
            values = schema["enum"] if "enum" in schema else [schema["const"]]
            if all(isinstance(v, str) for v in values):
                strings = frozenset(values)
                checks.append(lambda x: isinstance(x, str) and x in strings)
            else:
                checks.append(lambda x: any(json_equal(x, v) for v in values))
        if "pattern" in schema:
            search = re.compile(schema["pattern"]).search
            checks.append(lambda x: not isinstance(x, str) or search(x) is not None)
        if "minLength" in schema or "maxLength" in schema:
            # Lengths count code points, as Python's len() does.
            lo, hi = schema.get("minLength", 0), schema.get("maxLength", float("inf"))
            checks.append(lambda x: not isinstance(x, str) or lo <= len(x) <= hi)
        if set(schema) & {"properties", "required", "additionalProperties"} == {"required"}:
            # Common on its own under "not" (fields the producer must not set).
            only_required = tuple(schema["required"])
            checks.append(lambda x: not isinstance(x, dict) or all(k in x for k in only_required))
        elif {"properties", "required", "additionalProperties"} & set(schema):
            props = {k: build(v) for k, v in schema.get("properties", {}).items()}
            required = tuple(schema.get("required", ()))
            extra = build(schema["additionalProperties"]) if "additionalProperties" in schema else None

            def check_object(x):
                if not isinstance(x, dict):
                    return True
                for k in required:
                    if k not in x:
                        return False
                for k, v in x.items():
                    c = props.get(k)
                    if c is not None:
                        if not c(v):
                            return False
                    elif extra is not None and not extra(v):
                        return False
                return True

            checks.append(check_object)
        if "items" in schema:
            item = build(schema["items"])

            def check_items(x):
                if isinstance(x, list):
                    for v in x:
                        if not item(v):
                            return False
                return True

            checks.append(check_items)
        if "allOf" in schema:
            # Joined into this schema's own list: one loop, no generator.
            checks.extend(build(s) for s in schema["allOf"])
        if "anyOf" in schema:
            parts_any = [build(s) for s in schema["anyOf"]]
            checks.append(lambda x: any(p(x) for p in parts_any))
        if "oneOf" in schema:
            parts_one = [build(s) for s in schema["oneOf"]]
            checks.append(lambda x: sum(1 for p in parts_one if p(x)) == 1)
        if "not" in schema:
            negated = build(schema["not"])
            checks.append(lambda x: not negated(x))
        if "if" in schema and ("then" in schema or "else" in schema):
            cond = build(schema["if"])
            then = build(schema.get("then", True))
            other = build(schema.get("else", True))
            checks.append(lambda x: then(x) if cond(x) else other(x))
        if not checks:
            return _always
        if len(checks) == 1:
            return checks[0]

        def check_all(x):
            for c in checks:
                if not c(x):
                    return False
            return True

        return check_all

    return build(root)


class EventValidator:
    """The compiled check for speed, jsonschema for the verdict's details."""

    def __init__(self, schema: dict, use_compiled: bool = True):
        import jsonschema  # main() has checked it is installed

        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        self.slow = cls(schema)
        self.fast = None
        if use_compiled:
            try:
                self.fast = compile_schema(schema)
            except Unsupported as e:
                sys.stderr.write(f"nakadi_server.py: schema not compiled ({e}); validating with jsonschema (slow)\n")
        for name, definition in schema.get("$defs", {}).items():
            if isinstance(definition, dict) and "pattern" in definition:
                PATTERN_NAMES[definition["pattern"]] = name

    def why_invalid(self, value) -> str | None:
        if self.fast is not None and self.fast(value):
            return None
        errors = list(self.slow.iter_errors(value))
        if not errors:
            if self.fast is not None:
                # The compiled check and jsonschema disagree: a bug here, not
                # in the event. Say so loudly; jsonschema's verdict stands.
                sys.stderr.write(f"nakadi_server.py BUG: compiled schema check rejected an event jsonschema accepts: "
                                 f"{short(repr(value))}\n")
            return None
        return describe_errors(errors)


def load_validator(path: Path, use_compiled: bool = True) -> EventValidator:
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        sys.exit(
            "nakadi_server.py: the jsonschema package is missing (pip install -r tests/requirements.txt, "
            "or run with the repository's .venv/bin/python); pass --no-validate to run without it"
        )
    return EventValidator(json.loads(path.read_text()), use_compiled)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Nakadi test server (publishing endpoint, scripted faults)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token", default=None, help="expected bearer token (default: no check)")
    parser.add_argument("--schema", type=Path, default=DEFAULT_SCHEMA, help=f"default: {DEFAULT_SCHEMA}")
    parser.add_argument("--no-validate", action="store_true", help="skip the JSON Schema check (benchmarks)")
    parser.add_argument(
        "--validator",
        choices=("compiled", "jsonschema"),
        default="compiled",
        help="how events are checked: the schema compiled to closures (fast) or jsonschema alone (slow, the reference)",
    )
    parser.add_argument("--max-event-bytes", type=int, default=DEFAULT_MAX_EVENT_BYTES)
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)

    validator = None if args.no_validate else load_validator(args.schema, args.validator == "compiled")
    server = Server((args.host, args.port), Handler)
    server.state = State(args.token, args.max_event_bytes, validator, args.verbose)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
