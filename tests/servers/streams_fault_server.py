#!/usr/bin/env python3
"""DynamoDB Streams fault server: the real wire protocol, with scripted faults.

Why this exists: moto has one shard per table that never closes, no child
shards, no DescribeStream paging, iterators that never expire, no trimming and
no throttling. The relay's handling of all of those is tested here instead,
through the real `aws-sdk-dynamodbstreams` client, so the SDK's parsing and
error mapping are part of what is tested.

Protocol (awsJson1_0, as in the service model `streams-dynamodb-2012-08-10`):
  POST /  with  X-Amz-Target: DynamoDBStreams_20120810.<Operation>
                Content-Type: application/x-amz-json-1.0
  Operations: ListStreams, DescribeStream, GetShardIterator, GetRecords.
  SigV4 signatures are accepted without checking.
  Errors: HTTP 400 (500 for InternalServerError) with the body
  {"__type": "com.amazonaws.dynamodb.v20120810#<Code>", "message": "..."};
  the SDKs keep the part after '#'.

Control API (same port, plain JSON over HTTP, no X-Amz-Target):
  POST /_test/streams          create a stream      -> {"stream_arn"}
  POST /_test/records          append records       -> {"records": [{"shard_id","sequence_number","event_id"}]}
  POST /_test/split            close one shard, open children -> {"children": [...]}
                               ("rewind": true breaks the parent/child order on purpose)
  POST /_test/split-all        roll over every open shard     -> {"children": [...], "splits": {parent: [...]}}
  POST /_test/expire-iterators every iterator issued so far is expired
  POST /_test/trim             trim the head of a shard
  POST /_test/remove-shard     a closed shard ages out of DescribeStream
  POST /_test/throttle         the next `times` calls of an operation fail
  POST /_test/latency          the next `times` calls of an operation answer late
  GET  /_test/calls            API call counts since start (or last reset)
  POST /_test/reset-calls
  GET  /_test/shards?stream_arn=...  shards with record counts, open/closed
  POST /_test/generate         fill every open shard quickly (benchmarks)
  POST /_test/lifecycle        a "compressed day": background rollovers, splits,
                               retention trimming and aging-out of closed shards
  GET  /_test/lifecycle-report?stream_arn=...  rollovers, removed shards, and
                               every record trimmed or removed before it was served
  POST /_test/reset            forget all streams, throttles and counts; stop lifecycles
The request/response shapes are documented on each handler below.

CLI: streams_fault_server.py --port 0 [--host 127.0.0.1] [--region eu-central-1] [--verbose]
The first stdout line is exactly `LISTENING <port>`.

Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import hashlib
import json
import operator
import re
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ACCOUNT = "123456789012"
TARGET_PREFIX = "DynamoDBStreams_20120810."
OPERATIONS = ("DescribeStream", "GetShardIterator", "GetRecords", "ListStreams")
JSON_10 = "application/x-amz-json-1.0"

# Error `__type` namespaces as DynamoDB sends them. Both SDKs strip everything
# up to '#', so only the part after it decides the error variant; the prefixes
# are kept realistic anyway (validation errors come from the Coral framework).
NS_DYNAMODB = "com.amazonaws.dynamodb.v20120810#"
NS_VALIDATE = "com.amazon.coral.validate#"
NS_SERVICE = "com.amazon.coral.service#"
ERROR_NAMESPACE = {
    "ValidationException": NS_VALIDATE,
    "SerializationException": NS_SERVICE,
    "UnknownOperationException": NS_SERVICE,
}

# Real shard iterators expire 15 minutes after they were issued.
DEFAULT_ITERATOR_TTL = 900.0
# GetRecords returns at most 1,000 records or 1 MB, whichever comes first.
MAX_RECORDS_LIMIT = 1000
DEFAULT_MAX_PAGE_BYTES = 1024 * 1024
# DescribeStream / ListStreams: "The upper limit is 100."
MAX_DESCRIBE_LIMIT = 100

# Sequence numbers: decimal strings, strictly increasing within a stream and
# not contiguous (step 10). Real ones vary in length within one stream (the
# API reference example has 23, 24 and 25 digits), so the default start sits
# just below 10**21: after 10 records they grow from 21 to 22 digits. A client
# that compares them as strings, or does "+1" arithmetic, breaks visibly.
DEFAULT_FIRST_SEQUENCE_NUMBER = 10**21 - 100
SEQUENCE_STEP = 10

HASH_SPACE = 1 << 64  # keys are routed by a 64-bit hash, like partitions

VIEW_TYPES = ("KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES")
EVENT_NAMES = ("INSERT", "MODIFY", "REMOVE")


class ApiError(Exception):
    """An error answered in the DynamoDB Streams error shape."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def body(self) -> bytes:
        ns = ERROR_NAMESPACE.get(self.code, NS_DYNAMODB)
        return json.dumps({"__type": ns + self.code, "message": self.message}).encode()


class ControlError(Exception):
    """A bad request to the /_test/ control API (answered 400 {"error": ...})."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def dumps(obj) -> bytes:
    # Compact and ASCII-only: json.dumps escapes every control character, so
    # the raw \x01/\x02 markers used by record templates can never collide
    # with content.
    return json.dumps(obj, separators=(",", ":")).encode()


def validation_null(member: str) -> ApiError:
    # Wording of Coral's validation errors, which the real service returns.
    return ApiError(
        "ValidationException",
        f"1 validation error detected: Value null at '{member}' failed to satisfy "
        "constraint: Member must not be null",
    )


# --------------------------------------------------------------------------
# Record serialization
# --------------------------------------------------------------------------

ID_MARK = b"\x01"  # replaced by the eventID
SEQ_MARK = b"\x02"  # replaced by the SequenceNumber
N_MARK = b"{n}"  # in /_test/generate templates: replaced by a record number
_MARKS = re.compile(rb"(\x01|\x02|\{n\})")


def record_bytes(event_id: bytes, event_name: str, approx_time: float, body: bytes,
                 seq: bytes, size_bytes: int, view_type: str, region: str,
                 ttl_delete: bool) -> bytes:
    """One GetRecords `Record`, serialized once and served as bytes.

    `body` is the pre-serialized `"Keys":{...},"NewImage":{...},...` part, so
    images pass through exactly as the test posted them.
    """
    parts = [
        b'{"eventID":"', event_id,
        b'","eventName":"', event_name.encode(),
        b'","eventVersion":"1.1","eventSource":"aws:dynamodb","awsRegion":"', region.encode(),
        # Epoch seconds as a JSON number: the wire format of a `timestamp`
        # member in awsJson1_0. Millisecond precision.
        b'","dynamodb":{"ApproximateCreationDateTime":', format_epoch(approx_time),
        b",", body,
        b',"SequenceNumber":"', seq,
        b'","SizeBytes":', str(size_bytes).encode(),
        b',"StreamViewType":"', view_type.encode(), b'"}',
    ]
    if ttl_delete:
        # Member names as in the service model (`Identity`: PrincipalId, Type),
        # which is what the SDKs parse. The lower-case `type`/`principalId`
        # seen in Lambda events is Lambda's format, not the API's.
        parts.append(b',"userIdentity":{"PrincipalId":"dynamodb.amazonaws.com","Type":"Service"}')
    parts.append(b"}")
    return b"".join(parts)


def format_epoch(t: float) -> bytes:
    s = f"{t:.3f}".rstrip("0").rstrip(".")
    return s.encode()


def image_body(keys: dict, new_image, old_image, view_type: str) -> tuple[bytes, int]:
    """The Keys/NewImage/OldImage part of a record, as the view type allows.

    Returns the bytes and an approximate SizeBytes (the JSON size of the
    attribute maps; the real value is DynamoDB's item size, close enough).
    """
    fields = [b'"Keys":' + dumps(keys)]
    if new_image is not None and view_type in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"):
        fields.append(b'"NewImage":' + dumps(new_image))
    if old_image is not None and view_type in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
        fields.append(b'"OldImage":' + dumps(old_image))
    body = b",".join(fields)
    return body, len(body)


class GeneratedRun:
    """Records appended by /_test/generate: one template, rendered on demand.

    A benchmark fills shards with 100,000+ records each; storing each one as a
    separate ~1 KB bytes object would cost gigabytes. A run stores the template
    split at its markers once; each record costs one list slot (a reference to
    the run) plus its sequence number, and is rendered with one bytes join
    (~1-2 us) when served.
    """

    __slots__ = ("first_index", "n_base", "fmt", "pick", "id_prefix")

    def __init__(self, first_index: int, n_base: int, template: bytes):
        self.first_index = first_index
        self.n_base = n_base
        # The template becomes one printf-style bytes format (`bytes % tuple`
        # runs in C): literal '%' doubled, each marker replaced by %s.
        pieces = _MARKS.split(template)
        self.fmt = b"%s".join(p.replace(b"%", b"%%") for p in pieces[0::2])
        # Picks the format's arguments, in marker order, from the tuple
        # (eventID, SequenceNumber, n). A template has at least the eventID and
        # SequenceNumber markers, so the result is always a tuple.
        order = {ID_MARK: 0, SEQ_MARK: 1, N_MARK: 2}
        self.pick = operator.itemgetter(*(order[m] for m in pieces[1::2]))
        # 20 random hex digits + 12 digits of record number = 32 hex, unique.
        self.id_prefix = uuid.uuid4().hex[:20].encode()

    def render(self, index: int, seq: int) -> bytes:
        j = index - self.first_index
        return self.fmt % self.pick((b"%s%012x" % (self.id_prefix, j), b"%d" % seq,
                                     b"%d" % (self.n_base + j)))


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

class Shard:
    __slots__ = ("shard_id", "parent_id", "hash_lo", "hash_hi", "start_seq", "end_seq",
                 "seqs", "recs", "times", "sizes", "trim_index", "added_at", "added_from",
                 "closed_at", "removed_at", "served", "own_seq")

    def __init__(self, shard_id: str, parent_id: str | None, hash_lo: int, hash_hi: int,
                 start_seq: int):
        self.shard_id = shard_id
        self.parent_id = parent_id
        # Half-open slice [hash_lo, hash_hi) of the key hash space. Children
        # split their parent's slice, so a key stays in one shard until that
        # shard splits and then moves to exactly one child (per-key order
        # across parent and child can be checked).
        self.hash_lo = hash_lo
        self.hash_hi = hash_hi
        self.start_seq = start_seq
        self.end_seq: int | None = None  # set when the shard is closed
        self.seqs: list[int] = []  # sequence number of record i
        self.recs: list = []  # bytes, or the GeneratedRun that renders record i
        self.times: list[float] = []  # ApproximateCreationDateTime of record i
        self.sizes: list[int] = []  # SizeBytes of record i (for the 1 MB page cap)
        # Records [0, trim_index) are trimmed (gone). Records are never removed
        # from the lists, so an index is a stable position for iterators.
        self.trim_index = 0
        # Append times, for retention. Not ApproximateCreationDateTime (a test
        # may set that into the past): the time the server took the record.
        # Run-length encoded, one entry per append call: records
        # [added_from[k], added_from[k+1]) were appended at added_at[k].
        # Both lists are non-decreasing, so retention is one bisect.
        self.added_at: list[float] = []
        self.added_from: list[int] = []
        self.closed_at: float | None = None  # epoch seconds, set when closed
        self.removed_at: float | None = None  # set when it aged out of the stream
        # Record indexes ever returned by GetRecords: sorted, disjoint, merged
        # half-open [lo, hi) intervals (usually just one).
        self.served: list[list[int]] = []
        # None: records take the stream's next sequence numbers. A child of a
        # rewound split (/_test/split "rewind") numbers its records from this
        # one-element list instead, shared with its siblings.
        self.own_seq: list[int] | None = None

    def take_seq(self, stream: Stream, n: int = 1) -> int:
        """The first of `n` sequence numbers for records appended to this shard."""
        if self.own_seq is None:
            first = stream.next_seq
            stream.next_seq += n * SEQUENCE_STEP
        else:
            first = self.own_seq[0]
            self.own_seq[0] += n * SEQUENCE_STEP
        return first

    @property
    def is_open(self) -> bool:
        return self.end_seq is None

    def record(self, i: int) -> bytes:
        r = self.recs[i]
        return r if isinstance(r, bytes) else r.render(i, self.seqs[i])

    def event_id(self, i: int) -> str:
        # Every record starts with {"eventID":"<id>" (see record_bytes).
        r = self.record(i)
        return r[12:r.index(b'"', 12)].decode()

    def note_appended(self, first_index: int, t: float):
        """Records from `first_index` on were appended at `t` (call before
        adding them to the lists)."""
        if self.added_at and self.added_from[-1] == first_index:
            self.added_at[-1] = max(self.added_at[-1], t)  # nothing was added at the old time
        elif not self.added_at or t > self.added_at[-1]:
            self.added_at.append(t)
            self.added_from.append(first_index)
        # else: same time (or the clock stepped back): the run goes on.

    def appended_before(self, cutoff: float) -> int:
        """How many records (from the head) were appended before `cutoff`."""
        k = bisect.bisect_left(self.added_at, cutoff)
        return len(self.seqs) if k >= len(self.added_at) else self.added_from[k]

    def mark_served(self, lo: int, hi: int):
        """GetRecords returned records [lo, hi)."""
        if lo >= hi:
            return
        iv = self.served
        last = iv[-1] if iv else None
        if last is not None and last[0] <= lo <= last[1]:  # the usual case: reading on
            last[1] = max(last[1], hi)
            return
        merged = []
        for a, b in sorted(iv + [[lo, hi]]):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.served[:] = merged

    def served_count(self) -> int:
        return sum(b - a for a, b in self.served)

    def unserved(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of [lo, hi) that GetRecords never returned."""
        out = []
        for a, b in self.served:
            if b <= lo:
                continue
            if a >= hi:
                break
            if a > lo:
                out.append((lo, a))
            lo = max(lo, b)
        if lo < hi:
            out.append((lo, hi))
        return out

    def describe(self) -> dict:
        rng = {"StartingSequenceNumber": str(self.start_seq)}
        if self.end_seq is not None:
            rng["EndingSequenceNumber"] = str(self.end_seq)
        d = {"ShardId": self.shard_id, "SequenceNumberRange": rng}
        if self.parent_id:
            d["ParentShardId"] = self.parent_id
        return d


class Stream:
    def __init__(self, arn: str, table: str, label: str, created: float, view_type: str,
                 key_schema: list, describe_page_size: int, iterator_ttl: float,
                 max_page_bytes: int, first_seq: int):
        self.arn = arn
        self.table = table
        self.label = label
        self.created = created
        self.view_type = view_type
        self.key_schema = key_schema
        self.describe_page_size = describe_page_size
        self.iterator_ttl = iterator_ttl
        self.max_page_bytes = max_page_bytes
        self.next_seq = first_seq
        # Shards in creation order; shard ids sort the same way (their numeric
        # part is a strictly increasing millisecond stamp), so "after
        # ExclusiveStartShardId" is simply "id greater than it".
        self.shards: list[Shard] = []
        self.by_id: dict[str, Shard] = {}
        # Iterators carry the serial number they were issued with; those below
        # this were expired by /_test/expire-iterators.
        self.expired_below = 0
        # Shards that aged out (/_test/remove-shard or lifecycle retention), in
        # removal order; no longer in `shards`/`by_id`.
        self.removed: list[Shard] = []
        # Records trimmed or removed before any GetRecords returned them:
        # (shard, lo, hi, reason) for record indexes [lo, hi) of the shard.
        self.lost: list[tuple[Shard, int, int, str]] = []
        # /_test/lifecycle: the running background thread, if any, and what
        # all lifecycle runs on this stream did so far.
        self.lifecycle: Lifecycle | None = None
        self.rollovers = 0
        self.splits = 0
        self.history: list[dict] = []
        self.lifecycle_error: str | None = None  # a lifecycle thread died of a bug

    def take_seq(self) -> int:
        s = self.next_seq
        self.next_seq += SEQUENCE_STEP
        return s

    def trim_to(self, shard: Shard, index: int, reason: str):
        """Trim records [0, index) of a shard (never un-trims); the ones never
        served are remembered as lost."""
        index = min(index, len(shard.seqs))
        if index <= shard.trim_index:
            return
        for lo, hi in shard.unserved(shard.trim_index, index):
            self.lost.append((shard, lo, hi, reason))
        shard.trim_index = index

    def remove(self, shard: Shard, reason: str):
        """A closed shard ages out: gone from DescribeStream and by_id; its
        untrimmed records that were never served are lost."""
        for lo, hi in shard.unserved(shard.trim_index, len(shard.seqs)):
            self.lost.append((shard, lo, hi, reason))
        self.shards.remove(shard)
        del self.by_id[shard.shard_id]
        shard.removed_at = time.time()
        self.removed.append(shard)

    def open_shards(self) -> list[Shard]:
        return [s for s in self.shards if s.is_open]

    def route(self, key: str) -> Shard:
        h = int.from_bytes(hashlib.md5(key.encode()).digest()[:8], "big")
        for s in self.shards:
            if s.is_open and s.hash_lo <= h < s.hash_hi:
                return s
        raise ControlError("no open shard covers this key (every shard is closed)")


class State:
    """All server state behind one lock (requests are short; contention is fine)."""

    def __init__(self, region: str):
        self.region = region
        self.lock = threading.Lock()
        self.streams: dict[str, Stream] = {}
        self.last_shard_stamp = 0
        self.last_label_ms = 0
        self.iterator_serial = 0
        self.calls = {op: 0 for op in OPERATIONS}
        # operation -> list of [error code, remaining, message]
        self.faults: dict[str, list] = {}
        # Per operation: [seconds, times] of answers to delay (/_test/latency).
        self.latency: dict[str, list] = {}

    def stop_lifecycles(self):
        """Stop every lifecycle thread (lock held). The threads notice at
        their next tick and exit; nothing is joined under the lock."""
        for stream in self.streams.values():
            if stream.lifecycle is not None:
                stream.lifecycle.stop()
                stream.lifecycle = None

    # ---- helpers (call with the lock held) ----

    def new_shard_id(self) -> str:
        # shardId-<20-digit epoch millis>-<8 hex>, like the real ones. The
        # stamp is forced strictly increasing so ids sort in creation order.
        stamp = max(int(time.time() * 1000), self.last_shard_stamp + 1)
        self.last_shard_stamp = stamp
        return f"shardId-{stamp:020d}-{uuid.uuid4().hex[:8]}"

    def stream(self, arn) -> Stream:
        s = self.streams.get(arn)
        if s is None:
            raise ApiError("ResourceNotFoundException",
                           f"Requested resource not found: Stream: {arn} not found")
        return s

    def take_latency(self, op: str) -> float:
        """Seconds to hold the next answer of `op` back (0 when none is queued)."""
        entry = self.latency.get(op)
        if not entry or entry[1] <= 0:
            self.latency.pop(op, None)
            return 0.0
        entry[1] -= 1
        return entry[0]

    def take_fault(self, op: str):
        queue = self.faults.get(op)
        while queue:
            fault = queue[0]
            if fault[1] <= 0:
                queue.pop(0)
                continue
            fault[1] -= 1
            code, message = fault[0], fault[2]
            status = 500 if code in ("InternalServerError", "InternalFailure",
                                     "ServiceUnavailable") else 400
            if fault[3]:
                status = fault[3]
            raise ApiError(code, message, status)

    # ---- iterators ----

    def issue_iterator(self, stream: Stream, shard: Shard, index: int) -> str:
        self.iterator_serial += 1
        payload = {"a": stream.arn, "s": shard.shard_id, "i": index,
                   "t": round(time.time(), 3), "n": self.iterator_serial}
        # Opaque to clients; base64 of JSON keeps it easy to debug.
        return base64.urlsafe_b64encode(dumps(payload)).decode()

    def parse_iterator(self, it: str):
        try:
            p = json.loads(base64.urlsafe_b64decode(it.encode()))
            return p["a"], p["s"], int(p["i"]), float(p["t"]), int(p["n"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise ApiError("ValidationException", "Invalid ShardIterator") from None


# --------------------------------------------------------------------------
# Lifecycle: a stream's life in fast motion
# --------------------------------------------------------------------------

# Seconds between retention passes (rollovers are timed to the tick they are due).
LIFECYCLE_TICK = 0.1


class Lifecycle:
    """The background thread behind POST /_test/lifecycle: DynamoDB's shard
    life cycle on a short clock. Every `rollover_every` seconds each open shard
    closes and gets one child (two for one shard at the rollover numbers in
    `split_at`); every tick, records appended more than `retention` seconds
    ago are trimmed and closed shards that closed more than `retention` ago
    leave the stream (as /_test/remove-shard). All of it under the state lock.
    """

    def __init__(self, st: State, stream: Stream, rollover_every: float | None,
                 retention: float | None, split_at: list[int]):
        self.st = st
        self.stream = stream
        self.rollover_every = rollover_every  # None: no rollovers
        self.retention = retention  # None: nothing ages out
        self.split_at = sorted(set(split_at))
        self.started = time.time()
        self.next_rollover = None if rollover_every is None else self.started + rollover_every
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"lifecycle {stream.table}/{stream.label}")

    def start(self):
        self.thread.start()

    def stop(self):
        self._stopped.set()

    def _run(self):
        while True:
            wait = LIFECYCLE_TICK
            if self.next_rollover is not None:
                wait = min(wait, max(0.0, self.next_rollover - time.time()))
            if self._stopped.wait(wait):
                return
            with self.st.lock:
                # Stopped, replaced or reset while this thread waited.
                if self._stopped.is_set() or self.stream.lifecycle is not self:
                    return
                try:
                    self.step(time.time())
                except Exception as e:  # a bug: say so in the report and stop
                    traceback.print_exc()
                    self.stream.lifecycle_error = f"{type(e).__name__}: {e}"
                    self.stream.lifecycle = None
                    return

    def step(self, now: float):
        """One tick (lock held): a rollover if one is due, then retention."""
        stream = self.stream
        if self.next_rollover is not None and now >= self.next_rollover:
            stream.rollovers += 1
            n = stream.rollovers
            split = n in self.split_at
            children = {}
            # Shard ids sort in creation order: the first open shard splits.
            for k, shard in enumerate(sorted(stream.open_shards(), key=lambda s: s.shard_id)):
                children[shard.shard_id] = _split(self.st, stream, shard, 2 if split and k == 0 else 1)
            if split:
                stream.splits += 1
            stream.history.append({"rollover": n, "time": round(now, 3), "split": split,
                                   "children": children})
            self.next_rollover += self.rollover_every
            if self.next_rollover <= now:  # fell behind (a stalled machine): no burst
                self.next_rollover = now + self.rollover_every
        if self.retention is not None:
            cutoff = now - self.retention
            for shard in list(stream.shards):
                stream.trim_to(shard, shard.appended_before(cutoff), "retention")
                if (shard.closed_at is not None and shard.closed_at < cutoff
                        and shard.trim_index >= len(shard.seqs)):
                    stream.remove(shard, "retention")


# --------------------------------------------------------------------------
# DynamoDB Streams operations (lock held by the caller)
# --------------------------------------------------------------------------

def _limit(req: dict, member: str, maximum: int, too_high_code: str = "ValidationException"):
    limit = req.get("Limit")
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ApiError("ValidationException",
                       f"1 validation error detected: Value '{limit}' at '{member}' failed to "
                       "satisfy constraint: Member must have value greater than or equal to 1")
    if limit > maximum:
        raise ApiError(too_high_code,
                       f"1 validation error detected: Value '{limit}' at '{member}' failed to "
                       f"satisfy constraint: Member must have value less than or equal to {maximum}")
    return limit


def _seq_arg(req: dict) -> int:
    seq = req.get("SequenceNumber")
    if seq is None:
        raise validation_null("sequenceNumber")
    # Model: string of 21..40 characters; the service wants digits.
    if not isinstance(seq, str) or not (seq.isascii() and seq.isdigit()) or not 21 <= len(seq) <= 40:
        raise ApiError("ValidationException", f"Invalid SequenceNumber: {seq!r}")
    return int(seq)


def op_list_streams(st: State, req: dict) -> bytes:
    limit = _limit(req, "limit", MAX_DESCRIBE_LIMIT) or MAX_DESCRIBE_LIMIT
    table = req.get("TableName")
    start = req.get("ExclusiveStartStreamArn")
    streams = sorted(st.streams.values(), key=lambda s: s.arn)
    if table is not None:
        streams = [s for s in streams if s.table == table]
    if start is not None:
        streams = [s for s in streams if s.arn > start]
    page = streams[:limit]
    out = {"Streams": [{"StreamArn": s.arn, "TableName": s.table, "StreamLabel": s.label}
                       for s in page]}
    if len(streams) > limit:
        out["LastEvaluatedStreamArn"] = page[-1].arn
    return dumps(out)


def op_describe_stream(st: State, req: dict) -> bytes:
    arn = req.get("StreamArn")
    if arn is None:
        raise validation_null("streamArn")
    stream = st.stream(arn)
    limit = _limit(req, "limit", MAX_DESCRIBE_LIMIT)
    page_size = stream.describe_page_size if limit is None else min(limit, stream.describe_page_size)
    shards = stream.shards
    flt = req.get("ShardFilter")
    if flt is not None:
        if not isinstance(flt, dict) or flt.get("Type") != "CHILD_SHARDS" or not flt.get("ShardId"):
            raise ApiError("ValidationException",
                           "ShardFilter needs Type CHILD_SHARDS and a ShardId")
        parent = flt["ShardId"]
        shards = [s for s in shards if s.parent_id == parent]
    start = req.get("ExclusiveStartShardId")
    if start is not None:
        shards = [s for s in shards if s.shard_id > start]
    page = shards[:page_size]
    desc = {
        "StreamArn": stream.arn,
        "StreamLabel": stream.label,
        "StreamStatus": "ENABLED",
        "StreamViewType": stream.view_type,
        "CreationRequestDateTime": stream.created,
        "TableName": stream.table,
        "KeySchema": stream.key_schema,
        "Shards": [s.describe() for s in page],
    }
    if len(shards) > page_size:
        desc["LastEvaluatedShardId"] = page[-1].shard_id
    return dumps({"StreamDescription": desc})


def op_get_shard_iterator(st: State, req: dict) -> bytes:
    for member, name in (("StreamArn", "streamArn"), ("ShardId", "shardId"),
                         ("ShardIteratorType", "shardIteratorType")):
        if req.get(member) is None:
            raise validation_null(name)
    stream = st.stream(req["StreamArn"])
    shard = stream.by_id.get(req["ShardId"])
    if shard is None:
        raise ApiError("ResourceNotFoundException",
                       f"Requested resource not found: Shard does not exist: {req['ShardId']}")
    kind = req["ShardIteratorType"]
    if kind == "TRIM_HORIZON":
        index = shard.trim_index
    elif kind == "LATEST":
        index = len(shard.seqs)
    elif kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
        seq = _seq_arg(req)
        if seq < shard.start_seq or (shard.end_seq is not None and seq > shard.end_seq):
            raise ApiError("ValidationException",
                           f"Invalid SequenceNumber {seq} for shard {shard.shard_id}: outside its range")
        if kind == "AT_SEQUENCE_NUMBER":
            index = bisect.bisect_left(shard.seqs, seq)
        else:
            index = bisect.bisect_right(shard.seqs, seq)
        if index < shard.trim_index:
            raise ApiError("TrimmedDataAccessException",
                           "The data you are trying to access has been trimmed.")
    elif kind == "AT_TIMESTAMP":
        ts = req.get("Timestamp")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            raise validation_null("timestamp")
        if ts > time.time():
            raise ApiError("ValidationException", "Timestamp is in the future")
        # Older than the trim horizon -> the oldest untrimmed record.
        index = next((i for i in range(shard.trim_index, len(shard.times))
                      if shard.times[i] >= ts), len(shard.times))
    else:
        raise ApiError("ValidationException",
                       f"1 validation error detected: Value '{kind}' at 'shardIteratorType' failed "
                       "to satisfy constraint: Member must satisfy enum value set: [TRIM_HORIZON, "
                       "LATEST, AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, AT_TIMESTAMP]")
    return dumps({"ShardIterator": st.issue_iterator(stream, shard, index)})


def op_get_records(st: State, req: dict):
    """Returns a list of byte chunks; the records are joined outside the lock."""
    it = req.get("ShardIterator")
    if it is None:
        raise validation_null("shardIterator")
    if not isinstance(it, str) or not it:
        raise ApiError("ValidationException", "Invalid ShardIterator")
    # The documentation of LimitExceededException names "GetRecords was called
    # with a value of more than 1000 for the limit request parameter".
    limit = _limit(req, "limit", MAX_RECORDS_LIMIT, "LimitExceededException") or MAX_RECORDS_LIMIT
    arn, shard_id, index, issued, serial = st.parse_iterator(it)
    stream = st.stream(arn)
    shard = stream.by_id.get(shard_id)
    if shard is None:
        raise ApiError("ResourceNotFoundException",
                       f"Requested resource not found: Shard does not exist: {shard_id}")
    if serial < stream.expired_below or time.time() - issued > stream.iterator_ttl:
        raise ApiError("ExpiredIteratorException",
                       "Iterator expired. The iterator was created at time "
                       f"{time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime(issued))} while right "
                       f"now it is {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())} which is "
                       f"further in the future than the tolerated delay of "
                       f"{int(stream.iterator_ttl * 1000)} milliseconds.")
    if index < shard.trim_index:
        raise ApiError("TrimmedDataAccessException",
                       "The data you are trying to access has been trimmed.")
    end = min(index + limit, len(shard.seqs))
    refs = shard.recs[index:end]
    seqs = shard.seqs[index:end]
    # "GetRecords can retrieve a maximum of 1 MB of data or 1000 stream
    # records": the cap counts the records' SizeBytes (the data), not the
    # JSON around it; at least one record is always returned.
    if stream.max_page_bytes:
        total = 0
        for k, size in enumerate(shard.sizes[index:end]):
            total += size
            if total > stream.max_page_bytes and k > 0:
                refs, seqs, end = refs[:k], seqs[:k], index + k
                break
    shard.mark_served(index, end)
    # A closed shard read to its end has no next iterator: the response that
    # carries its last records already omits NextShardIterator.
    at_end = not shard.is_open and end >= len(shard.seqs)
    nxt = None if at_end else st.issue_iterator(stream, shard, end)
    return refs, seqs, (index, nxt)


def finish_get_records(refs, seqs, ctx) -> list[bytes]:
    """Render generated records and join the page (outside the lock)."""
    index, nxt = ctx
    chunks = [r if isinstance(r, bytes) else r.render(index + k, seqs[k]) for k, r in enumerate(refs)]
    out = [b'{"Records":[', b",".join(chunks), b"]"]
    if nxt is not None:
        out.append(b',"NextShardIterator":"' + nxt.encode() + b'"')
    out.append(b"}")
    return out


# --------------------------------------------------------------------------
# Control API (lock held by the caller)
# --------------------------------------------------------------------------

def _need(req: dict, name: str, types=str):
    v = req.get(name)
    if v is None or not isinstance(v, types) or isinstance(v, bool) and types is not bool:
        raise ControlError(f"missing or invalid '{name}'")
    return v


def _cstream(st: State, req: dict) -> Stream:
    arn = _need(req, "stream_arn")
    s = st.streams.get(arn)
    if s is None:
        raise ControlError(f"unknown stream_arn {arn}", 404)
    return s


def _cshard(stream: Stream, shard_id: str) -> Shard:
    s = stream.by_id.get(shard_id)
    if s is None:
        raise ControlError(f"unknown shard_id {shard_id}", 404)
    return s


def ctl_streams(st: State, req: dict):
    """POST /_test/streams
    {"table": "orders", "shards": 1, "view_type": "NEW_AND_OLD_IMAGES",
     "key_schema": [{"AttributeName": "pk", "KeyType": "HASH"}],
     "describe_page_size": 100, "iterator_ttl_seconds": 900,
     "max_page_bytes": 1048576 (cap on the SizeBytes of a GetRecords page; 0 = none),
     "first_sequence_number": "999999999999999999900"}
    -> {"stream_arn": "...", "shard_ids": [...]}"""
    table = _need(req, "table")
    n = req.get("shards", 1)
    view_type = req.get("view_type", "NEW_AND_OLD_IMAGES")
    if view_type not in VIEW_TYPES:
        raise ControlError(f"view_type must be one of {VIEW_TYPES}")
    if not isinstance(n, int) or n < 1:
        raise ControlError("shards must be an integer >= 1")
    page = req.get("describe_page_size", MAX_DESCRIBE_LIMIT)
    if not isinstance(page, int) or page < 1:
        raise ControlError("describe_page_size must be an integer >= 1")
    first_seq = int(req.get("first_sequence_number", DEFAULT_FIRST_SEQUENCE_NUMBER))
    # Stream label: creation time in ISO 8601 with milliseconds, made unique.
    now = time.time()
    ms = max(int(now * 1000), st.last_label_ms + 1)
    st.last_label_ms = ms
    label = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}"
    arn = f"arn:aws:dynamodb:{st.region}:{ACCOUNT}:table/{table}/stream/{label}"
    stream = Stream(
        arn, table, label, round(now, 3), view_type,
        req.get("key_schema") or [{"AttributeName": "pk", "KeyType": "HASH"}],
        page, float(req.get("iterator_ttl_seconds", DEFAULT_ITERATOR_TTL)),
        int(req.get("max_page_bytes", DEFAULT_MAX_PAGE_BYTES)), first_seq,
    )
    for i in range(n):
        lo, hi = HASH_SPACE * i // n, HASH_SPACE * (i + 1) // n
        _add_shard(st, stream, None, lo, hi)
    st.streams[arn] = stream
    return {"stream_arn": arn, "shard_ids": [s.shard_id for s in stream.shards]}


def _add_shard(st: State, stream: Stream, parent: str | None, lo: int, hi: int,
               start_seq: int | None = None) -> Shard:
    shard = Shard(st.new_shard_id(), parent, lo, hi,
                  stream.take_seq() if start_seq is None else start_seq)
    stream.shards.append(shard)
    stream.by_id[shard.shard_id] = shard
    return shard


def ctl_records(st: State, req: dict):
    """POST /_test/records
    {"stream_arn", "records": [{"key": "k1", "event_name": "MODIFY", "keys": {...},
      "new_image": {...}, "old_image": {...}, "shard_id"?: "...", "ttl_delete"?: true,
      "event_id"?: "<32 hex>", "approximate_creation_time"?: <epoch seconds>,
      "size_bytes"?: n}]}
    -> {"records": [{"shard_id", "sequence_number", "event_id"}]}
    Routing: explicit shard_id, else the open shard whose hash slice holds
    md5(key) (key defaults to the JSON of `keys`). `keys` defaults to
    {<hash key name>: {"S": key}}. event_name defaults from the images."""
    stream = _cstream(st, req)
    records = req.get("records")
    if not isinstance(records, list):
        raise ControlError("records must be a list")
    hash_attr = next((k["AttributeName"] for k in stream.key_schema if k.get("KeyType") == "HASH"),
                     "pk")
    now = time.time()
    prepared = []
    # Validate everything first so a bad batch appends nothing.
    for r in records:
        if not isinstance(r, dict):
            raise ControlError("each record must be an object")
        keys = r.get("keys")
        key = r.get("key")
        if keys is None:
            if key is None:
                raise ControlError("a record needs 'key' or 'keys'")
            keys = {hash_attr: {"S": str(key)}}
        if key is None:
            key = json.dumps(keys, sort_keys=True)
        new, old = r.get("new_image"), r.get("old_image")
        name = r.get("event_name") or ("INSERT" if old is None else "REMOVE" if new is None else "MODIFY")
        if name not in EVENT_NAMES:
            raise ControlError(f"event_name must be one of {EVENT_NAMES}")
        if r.get("shard_id") is not None:
            shard = _cshard(stream, r["shard_id"])
            if not shard.is_open:
                raise ControlError(f"shard {shard.shard_id} is closed")
        else:
            shard = stream.route(str(key))
        prepared.append((r, keys, new, old, name, shard))
    out = []
    for r, keys, new, old, name, shard in prepared:
        seq = shard.take_seq(stream)
        event_id = r.get("event_id") or uuid.uuid4().hex
        t = float(r.get("approximate_creation_time", now))
        body, size = image_body(keys, new, old, stream.view_type)
        data = record_bytes(event_id.encode(), name, t, body, str(seq).encode(),
                            int(r.get("size_bytes", size)), stream.view_type, st.region,
                            bool(r.get("ttl_delete")))
        shard.note_appended(len(shard.seqs), now)
        shard.seqs.append(seq)
        shard.recs.append(data)
        shard.times.append(t)
        shard.sizes.append(int(r.get("size_bytes", size)))
        out.append({"shard_id": shard.shard_id, "sequence_number": str(seq), "event_id": event_id})
    return {"records": out}


def _split(st: State, stream: Stream, shard: Shard, children: int,
           rewind: bool = False) -> list[str]:
    if not shard.is_open:
        raise ControlError(f"shard {shard.shard_id} is already closed")
    if not isinstance(children, int) or children < 1:
        raise ControlError("children must be an integer >= 1")
    # EndingSequenceNumber: the last record's, or a fresh one for an empty shard.
    shard.end_seq = shard.seqs[-1] if shard.seqs else shard.take_seq(stream)
    shard.closed_at = time.time()
    lo, hi = shard.hash_lo, shard.hash_hi
    # Rewound: the children start at their parent's StartingSequenceNumber and
    # number their records on from there, so every child's first record is at
    # most its parent's first (and so its last).
    own = [shard.start_seq + SEQUENCE_STEP] if rewind else None
    ids = []
    for i in range(children):
        c = _add_shard(st, stream, shard.shard_id,
                       lo + (hi - lo) * i // children, lo + (hi - lo) * (i + 1) // children,
                       start_seq=None if own is None else shard.start_seq)
        c.own_seq = own
        ids.append(c.shard_id)
    return ids


def ctl_split(st: State, req: dict):
    """POST /_test/split {"stream_arn", "shard_id", "children": 2, "rewind": false}
    -> {"children": [ids]}
    "rewind": true breaks on purpose what DynamoDB does, though AWS documents
    order within a shard only: a child's records get sequence numbers below its
    parent's last (numbered on from the parent's StartingSequenceNumber, apart
    from the stream's counter), for a reader's parent/child order check."""
    stream = _cstream(st, req)
    shard = _cshard(stream, _need(req, "shard_id"))
    rewind = req.get("rewind", False)
    if not isinstance(rewind, bool):
        raise ControlError("rewind must be true or false")
    return {"children": _split(st, stream, shard, req.get("children", 2), rewind)}


def ctl_split_all(st: State, req: dict):
    """POST /_test/split-all {"stream_arn", "children": 1}: a rollover; every open
    shard closes and gets `children` (default 1, as in DynamoDB's periodic
    rollover) new children. -> {"children": [all new ids], "splits": {parent: [ids]}}"""
    stream = _cstream(st, req)
    children = req.get("children", 1)
    splits = {}
    for shard in stream.open_shards():
        splits[shard.shard_id] = _split(st, stream, shard, children)
    return {"children": [c for ids in splits.values() for c in ids], "splits": splits}


def ctl_remove_shard(st: State, req: dict):
    """POST /_test/remove-shard {"stream_arn", "shard_id"}: a closed shard ages
    out, as real shards do 24 h after closing: DescribeStream no longer lists
    it, GetShardIterator and its iterators answer ResourceNotFoundException.
    Its children keep their ParentShardId, now naming a shard nobody lists
    (a reader that waits for unlisted parents would wait forever)."""
    stream = _cstream(st, req)
    shard = _cshard(stream, _need(req, "shard_id"))
    if shard.is_open:
        raise ControlError(f"shard {shard.shard_id} is open; split it first")
    stream.remove(shard, "removed")
    return {"ok": True}


def _seconds(req: dict, name: str) -> float | None:
    v = req.get(name)
    if v is None or v == 0:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
        raise ControlError(f"'{name}' must be a number of seconds > 0 (or 0/null for none)")
    return float(v)


def ctl_lifecycle(st: State, req: dict):
    """POST /_test/lifecycle {"stream_arn", "rollover_every": 0.3, "retention": 0.8,
      "split_at": [2, 5], "stop": false}
    Starts a background thread that gives the stream DynamoDB's shard life
    cycle on a short clock:
    - every `rollover_every` seconds (the first one that long after this call)
      a rollover: every open shard closes and gets one child, like
      /_test/split-all; at the rollover numbers listed in `split_at` (1-based,
      counted per stream over all lifecycle runs, as in the report) the first
      open shard by id gets two children instead (a split);
    - every 0.1 s retention: records appended more than `retention` seconds
      ago are trimmed (the append time is when the server took the record, via
      /_test/records or /_test/generate, not its ApproximateCreationDateTime),
      and a closed shard that closed more than `retention` seconds ago (so all
      its records are older) leaves the stream exactly as with
      /_test/remove-shard.
    Either time may be 0/null: no rollovers, or nothing ages out (not both).
    Posting again replaces the running lifecycle (counts go on); {"stream_arn",
    "stop": true} stops it. /_test/reset and server shutdown stop it too.
    -> {"running": true|false, "started_at": <epoch seconds>|null}"""
    stream = _cstream(st, req)
    if req.get("stop"):
        if stream.lifecycle is not None:
            stream.lifecycle.stop()
            stream.lifecycle = None
        return {"running": False, "started_at": None}
    every = _seconds(req, "rollover_every")
    retention = _seconds(req, "retention")
    if every is None and retention is None:
        raise ControlError("give rollover_every and/or retention (seconds > 0)")
    split_at = req.get("split_at") or []
    if not isinstance(split_at, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in split_at):
        raise ControlError("split_at must be a list of rollover numbers >= 1")
    if split_at and every is None:
        raise ControlError("split_at needs rollover_every")
    if stream.lifecycle is not None:
        stream.lifecycle.stop()
    lc = Lifecycle(st, stream, every, retention, split_at)
    stream.lifecycle = lc
    stream.lifecycle_error = None
    lc.start()
    return {"running": True, "started_at": round(lc.started, 3)}


def ctl_lifecycle_report(st: State, req: dict):
    """GET /_test/lifecycle-report?stream_arn=... What happened to the stream's
    shards and records, so a test can tell unavoidable losses from bugs.
    "served" counts a shard's records that some GetRecords call returned;
    "unread" = records - served. Removals and trims by /_test/remove-shard and
    /_test/trim count too, with or without a lifecycle.
    -> {"running": bool, "rollover_every": s|null, "retention": s|null,
        "split_at": [n], "error": null|"<the lifecycle thread's crash>",
        "rollovers": n (rollovers done, splits included), "splits": n,
        "history": [{"rollover": n, "time": epoch, "split": bool,
                     "children": {parent_id: [child ids]}}],
        "removed": [{"shard_id", "parent_shard_id", "records", "served", "unread",
                     "trimmed", "starting_sequence_number", "ending_sequence_number",
                     "closed_at", "removed_at"}]   (in removal order),
        "trimmed_unserved": [{"shard_id", "sequence_number", "event_id",
                              "reason": "retention"|"trim"|"removed"}],
        "trimmed_unserved_count": n,
        "shards": [{"shard_id", "parent_shard_id", "open", "records", "trimmed",
                    "served", "closed_at"}]   (the shards DescribeStream lists)}
    trimmed_unserved: every record trimmed (by retention or /_test/trim) or
    removed with its shard (by retention or /_test/remove-shard) before any
    GetRecords call returned it, in the order they went; event_id is the
    record's eventID."""
    stream = _cstream(st, req)
    lc = stream.lifecycle

    def t(v):
        return None if v is None else round(v, 3)

    lost = []
    for shard, lo, hi, reason in stream.lost:
        for i in range(lo, hi):
            lost.append({"shard_id": shard.shard_id, "sequence_number": str(shard.seqs[i]),
                         "event_id": shard.event_id(i), "reason": reason})
    return {
        "running": lc is not None,
        "rollover_every": lc.rollover_every if lc else None,
        "retention": lc.retention if lc else None,
        "split_at": lc.split_at if lc else [],
        "error": stream.lifecycle_error,
        "rollovers": stream.rollovers,
        "splits": stream.splits,
        "history": stream.history,
        "removed": [{
            "shard_id": s.shard_id,
            "parent_shard_id": s.parent_id,
            "records": len(s.seqs),
            "served": s.served_count(),
            "unread": len(s.seqs) - s.served_count(),
            "trimmed": s.trim_index,
            "starting_sequence_number": str(s.start_seq),
            "ending_sequence_number": str(s.end_seq),
            "closed_at": t(s.closed_at),
            "removed_at": t(s.removed_at),
        } for s in stream.removed],
        "trimmed_unserved": lost,
        "trimmed_unserved_count": len(lost),
        "shards": [{
            "shard_id": s.shard_id,
            "parent_shard_id": s.parent_id,
            "open": s.is_open,
            "records": len(s.seqs),
            "trimmed": s.trim_index,
            "served": s.served_count(),
            "closed_at": t(s.closed_at),
        } for s in stream.shards],
    }


def ctl_expire(st: State, req: dict):
    """POST /_test/expire-iterators {"stream_arn"}: every iterator issued so far
    (for this stream) answers ExpiredIteratorException."""
    stream = _cstream(st, req)
    stream.expired_below = st.iterator_serial + 1
    return {"ok": True}


def ctl_trim(st: State, req: dict):
    """POST /_test/trim {"stream_arn", "shard_id", "before_sequence_number": "..."}
    or {"stream_arn", "shard_id", "count": n} (the first n records of the shard).
    -> {"trimmed": <records trimmed in total>, "trim_horizon": <first untrimmed seq or null>}"""
    stream = _cstream(st, req)
    shard = _cshard(stream, _need(req, "shard_id"))
    if req.get("before_sequence_number") is not None:
        idx = bisect.bisect_left(shard.seqs, int(req["before_sequence_number"]))
    elif req.get("count") is not None:
        idx = min(int(req["count"]), len(shard.seqs))
    else:
        raise ControlError("give before_sequence_number or count")
    stream.trim_to(shard, idx, "trim")  # trimming never un-trims
    horizon = shard.seqs[shard.trim_index] if shard.trim_index < len(shard.seqs) else None
    return {"trimmed": shard.trim_index, "trim_horizon": None if horizon is None else str(horizon)}


def ctl_throttle(st: State, req: dict):
    """POST /_test/throttle {"operation": "GetRecords", "times": 5,
    "error": "LimitExceededException", "message"?: "...", "status"?: 400}
    The next `times` calls of the operation fail with that error (HTTP 500 for
    InternalServerError, else 400, unless `status` says otherwise). Faults
    queue up in the order posted. `times: 0` clears the operation's queue."""
    op = _need(req, "operation")
    if op not in OPERATIONS:
        raise ControlError(f"operation must be one of {OPERATIONS}")
    times = req.get("times", 1)
    if times == 0:
        st.faults.pop(op, None)
        return {"ok": True}
    code = req.get("error", "LimitExceededException")
    msg = req.get("message") or {
        "LimitExceededException": "Too many operations for a given subscriber.",
        "InternalServerError": "The server encountered an internal error trying to fulfill the request.",
    }.get(code, f"Injected {code}")
    st.faults.setdefault(op, []).append([code, int(times), msg, req.get("status")])
    return {"ok": True}


def ctl_latency(st: State, req: dict):
    """POST /_test/latency {"operation": "DescribeStream", "seconds": 8, "times": 3}
    The next `times` calls of the operation are answered `seconds` late (the
    wait happens outside the server's lock, so other calls go on). `times: 0`
    clears it."""
    op = _need(req, "operation")
    if op not in OPERATIONS:
        raise ControlError(f"operation must be one of {OPERATIONS}")
    seconds = req.get("seconds", 1)
    times = req.get("times", 1)
    if not isinstance(seconds, (int, float)) or seconds < 0 or not isinstance(times, int) or times < 0:
        raise ControlError("seconds must be a number >= 0 and times an integer >= 0")
    if times == 0:
        st.latency.pop(op, None)
    else:
        st.latency[op] = [float(seconds), times]
    return {"ok": True}


def ctl_calls(st: State, req: dict):
    """GET /_test/calls -> {"DescribeStream": n, "GetShardIterator": n, "GetRecords": n, "ListStreams": n}"""
    return dict(st.calls)


def ctl_reset_calls(st: State, req: dict):
    for op in st.calls:
        st.calls[op] = 0
    return dict(st.calls)


def ctl_shards(st: State, req: dict):
    """GET /_test/shards?stream_arn=... -> {"shards": [{"shard_id", "parent_shard_id",
    "open", "records", "trimmed", "starting_sequence_number", "ending_sequence_number",
    "last_sequence_number"}]}"""
    stream = _cstream(st, req)
    return {"shards": [{
        "shard_id": s.shard_id,
        "parent_shard_id": s.parent_id,
        "open": s.is_open,
        "records": len(s.seqs),
        "trimmed": s.trim_index,
        "starting_sequence_number": str(s.start_seq),
        "ending_sequence_number": None if s.end_seq is None else str(s.end_seq),
        "last_sequence_number": str(s.seqs[-1]) if s.seqs else None,
    } for s in stream.shards]}


def ctl_generate(st: State, req: dict):
    """POST /_test/generate {"stream_arn", "records_per_shard": 100000,
      "record": {"event_name", "keys", "new_image", "old_image", "ttl_delete"?}}
    Appends records_per_shard records to every open shard. Any "{n}" inside the
    template's strings is replaced by a record number unique within the call
    (e.g. {"pk": {"S": "order-{n}"}}), so keys can differ cheaply.
    -> {"records": <total>, "shards": {shard_id: count}}"""
    stream = _cstream(st, req)
    per = req.get("records_per_shard")
    if not isinstance(per, int) or per < 0:
        raise ControlError("records_per_shard must be an integer >= 0")
    tpl = req.get("record") or {}
    keys = tpl.get("keys") or {"pk": {"S": "key-{n}"}}
    new, old = tpl.get("new_image"), tpl.get("old_image")
    name = tpl.get("event_name") or ("INSERT" if old is None else "REMOVE" if new is None else "MODIFY")
    t = time.time()
    body, size = image_body(keys, new, old, stream.view_type)
    template = record_bytes(ID_MARK, name, t, body, SEQ_MARK, size, stream.view_type,
                            st.region, bool(tpl.get("ttl_delete")))
    counts = {}
    n_base = 0
    for shard in stream.open_shards():
        run = GeneratedRun(len(shard.seqs), n_base, template)
        shard.note_appended(len(shard.seqs), t)
        first = shard.take_seq(stream, per)
        shard.seqs.extend(range(first, first + per * SEQUENCE_STEP, SEQUENCE_STEP))
        shard.recs.extend([run] * per)
        shard.times.extend([t] * per)
        shard.sizes.extend([size] * per)
        counts[shard.shard_id] = per
        n_base += per
    return {"records": n_base, "shards": counts}


def ctl_reset(st: State, req: dict):
    """POST /_test/reset: forget every stream, queued fault and call count;
    stops every /_test/lifecycle thread."""
    st.stop_lifecycles()
    st.streams.clear()
    st.faults.clear()
    st.latency.clear()
    for op in st.calls:
        st.calls[op] = 0
    return {"ok": True}


CONTROL_POST = {
    "/_test/streams": ctl_streams,
    "/_test/records": ctl_records,
    "/_test/split": ctl_split,
    "/_test/split-all": ctl_split_all,
    "/_test/expire-iterators": ctl_expire,
    "/_test/remove-shard": ctl_remove_shard,
    "/_test/trim": ctl_trim,
    "/_test/throttle": ctl_throttle,
    "/_test/latency": ctl_latency,
    "/_test/reset-calls": ctl_reset_calls,
    "/_test/generate": ctl_generate,
    "/_test/lifecycle": ctl_lifecycle,
    "/_test/reset": ctl_reset,
}
CONTROL_GET = {
    "/_test/calls": ctl_calls,
    "/_test/shards": ctl_shards,
    "/_test/lifecycle-report": ctl_lifecycle_report,
}


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    # Keep-alive: the SDK's connection pool reuses connections; every response
    # carries Content-Length.
    protocol_version = "HTTP/1.1"
    # A buffered writer, flushed once the handler returns, so a response goes out
    # in one write as DynamoDB's does: a small one in one segment, read by one
    # recv. Unbuffered, headers and body went out in two writes, and a client
    # woke twice per response. TCP_NODELAY still matters for responses larger
    # than the buffer: Nagle plus delayed ACKs would add ~40 ms to each.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server_version = "StreamsFaultServer/1"
    sys_version = ""

    state: State = None  # set by make_server
    verbose = False

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status: int, chunks, content_type: str):
        if isinstance(chunks, bytes):
            chunks = [chunks]
        length = sum(len(c) for c in chunks)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("x-amzn-RequestId", uuid.uuid4().hex.upper())
        self.end_headers()
        self.wfile.write(b"".join(chunks))

    def do_GET(self):
        url = urlsplit(self.path)
        self._read_body()
        fn = CONTROL_GET.get(url.path)
        if fn is None:
            return self._send(404, dumps({"error": f"no such path {url.path}"}), "application/json")
        req = {k: v[0] for k, v in parse_qs(url.query).items()}
        self._control(fn, req)

    def do_POST(self):
        url = urlsplit(self.path)
        body = self._read_body()
        if url.path.startswith("/_test/"):
            fn = CONTROL_POST.get(url.path)
            if fn is None:
                return self._send(404, dumps({"error": f"no such path {url.path}"}), "application/json")
            try:
                req = json.loads(body or b"{}")
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                return self._send(400, dumps({"error": f"bad JSON: {e}"}), "application/json")
            return self._control(fn, req)
        self._api(body)

    def _control(self, fn, req):
        try:
            with self.state.lock:
                out = fn(self.state, req)
            self._send(200, dumps(out), "application/json")
        except ControlError as e:
            self._send(e.status, dumps({"error": str(e)}), "application/json")
        except (ValueError, TypeError, KeyError) as e:
            self._send(400, dumps({"error": f"{type(e).__name__}: {e}"}), "application/json")

    def _api(self, body: bytes):
        st = self.state
        target = self.headers.get("X-Amz-Target", "")
        op = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else None
        try:
            if op not in OPERATIONS:
                raise ApiError("UnknownOperationException", f"Unknown operation: {target!r}")
            try:
                req = json.loads(body or b"{}")
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError:
                raise ApiError("SerializationException", "Start of structure or map found where not expected.") from None
            with st.lock:
                st.calls[op] += 1
                delay = st.take_latency(op)
                st.take_fault(op)
                if op == "GetRecords":
                    refs, seqs, ctx = op_get_records(st, req)
                elif op == "DescribeStream":
                    out = op_describe_stream(st, req)
                elif op == "GetShardIterator":
                    out = op_get_shard_iterator(st, req)
                else:
                    out = op_list_streams(st, req)
            if op == "GetRecords":
                # Rendering and joining ~1 MB happens outside the lock.
                out = finish_get_records(refs, seqs, ctx)
            if delay:
                time.sleep(delay)
            self._send(200, out, JSON_10)
        except ApiError as e:
            self._send(e.status, e.body(), JSON_10)
        except Exception as e:  # a bug here must still look like AWS to the client
            traceback.print_exc()
            err = ApiError("InternalServerError", f"fault server bug: {type(e).__name__}: {e}", 500)
            self._send(500, err.body(), JSON_10)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # keep-alive threads must not block shutdown
    allow_reuse_address = True
    request_queue_size = 128
    state: State = None  # set by make_server

    def server_close(self):
        # Lifecycle threads are daemons anyway; stopping them keeps an
        # in-process server (tests) from leaving them running.
        if self.state is not None:
            with self.state.lock:
                self.state.stop_lifecycles()
        super().server_close()


def make_server(host: str, port: int, region: str = "eu-central-1", verbose: bool = False) -> Server:
    state = State(region)
    handler = type("BoundHandler", (Handler,), {"state": state, "verbose": verbose})
    server = Server((host, port), handler)
    server.state = state
    return server


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--region", default="eu-central-1")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)
    server = make_server(args.host, args.port, args.region, args.verbose)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
