#!/usr/bin/env python3
"""`make bench`: the relay measured end to end, at its ceiling, and against the seed design.

Four measurements, one table (issues #8 and #21):
  e2e       moto, writes at a steady rate; the relay and the Python baseline (benches/baseline.py)
            read the same stream side by side, each into its own Nakadi test server. Latency is
            from the acknowledged PutItem to the event's arrival at the Nakadi test server.
  ceiling   the relay reading pre-filled 1 KB order records from the DynamoDB Streams fault server
            (many shards) into a minimal sink (benches/sink.py); the baseline the same way.
  shards    the relay owning many shards: peak RSS and the request rates per pod.
  cost      what an idle shard costs (issue #21): one pod, 100 idle shards on the fault server,
            default settings; requests per operation and relay CPU per shard-second, dollars per
            idle shard-month at list prices, and the latency of a write to a quiet shard. A full
            run adds 1,000 idle shards, request counts only. --idle-poll 250ms,600ms,... runs it
            once per RELAY_IDLE_POLL_INTERVAL instead and prints the interval table.

CPU is read from /proc/<pid>/stat (utime + stime) and peak RSS from VmHWM. The machine is shared,
so wall-clock throughput says little: the ceiling is given as events per CPU-second of the relay.

CLI: run.py [--smoke] [--relay PATH] [--only e2e,backlog,ceiling,shards,cost] [--idle-poll LIST] [--json PATH]
--smoke runs every part briefly (CI proves the scripts work; no targets are checked).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
OUT = ROOT / "target" / "bench"
FIXTURE = json.loads((ROOT / "tests/fixtures/transform/order-modify.json").read_text())
NEW_IMAGE = FIXTURE["dynamodb"]["NewImage"]
OLD_IMAGE = FIXTURE["dynamodb"]["OldImage"]
REGION = "eu-central-1"
EVENT_TYPE = "payments.order-changed"
CLK_TCK = os.sysconf("SC_CLK_TCK")
AWS_ENV = {
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
}


# ---- processes ------------------------------------------------------------------------------

class Procs:
    """Every process a measurement started, stopped (by its own pid) when the measurement ends."""

    def __init__(self, name: str):
        self.dir = OUT / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []

    def spawn(self, name: str, cmd: list, env: dict | None = None) -> subprocess.Popen:
        p = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=open(self.dir / f"{name}.log", "wb"),
            text=True,
        )
        self.procs.append(p)
        return p

    def server(self, name: str, script: str, *args) -> str:
        """Starts a server that prints `LISTENING <port>` first; returns its base URL."""
        p = self.spawn(name, [PY, str(ROOT / script), "--port", "0", *args])
        line = p.stdout.readline()
        if not line.startswith("LISTENING "):
            raise SystemExit(f"{name} did not start; see {self.dir / name}.log")
        return f"http://127.0.0.1:{int(line.split()[1])}"

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_until(what: str, timeout: float, check, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    """VmHWM is the peak resident set size, VmRSS the current one."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def post_json(url: str, body) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def metric(relay_http: str, name: str) -> float:
    """The sum of a Prometheus metric's samples on the relay's /metrics."""
    with urllib.request.urlopen(f"{relay_http}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def percentile(sorted_values: list, q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the relay and the baseline -------------------------------------------------------------

def start_relay(procs: Procs, relay: str, moto: str, nakadi: str, stream_arn: str, dlq: str, extra=None) -> tuple:
    port = free_port()
    env = {
        **AWS_ENV,
        "AWS_ENDPOINT_URL": moto,
        "RELAY_STREAM_ARN": stream_arn,
        "RELAY_LEASE_TABLE": "relay-leases",
        "RELAY_CREATE_LEASE_TABLE": "true",
        "RELAY_NAKADI_URL": nakadi,
        "RELAY_EVENT_TYPE": EVENT_TYPE,
        "RELAY_DATA_TYPE": "payments:order",
        "RELAY_DLQ_URL": dlq,
        "RELAY_HTTP_ADDR": f"127.0.0.1:{port}",
        "RELAY_WORKER_ID": "bench-pod",
        "RELAY_LOG_FORMAT": "json",
        **(extra or {}),
    }
    p = procs.spawn("relay", [relay], env)
    http = f"http://127.0.0.1:{port}"

    def ready():
        try:
            with urllib.request.urlopen(f"{http}/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            if p.poll() is not None:
                raise SystemExit(f"the relay exited ({p.returncode}); see {procs.dir}/relay.log")
            return False

    wait_until("the relay to be ready", 120, ready, 0.1)
    return p, http


def start_baseline(procs: Procs, moto: str, nakadi: str, stream_arn: str, dlq: str, streams_url=None):
    env = {**AWS_ENV, "AWS_ENDPOINT_URL": moto}
    if streams_url:
        env["AWS_ENDPOINT_URL_DYNAMODB_STREAMS"] = streams_url
    p = procs.spawn(
        "baseline",
        [PY, str(ROOT / "benches/baseline.py"), "--stream-arn", stream_arn, "--nakadi-url", nakadi,
         "--event-type", EVENT_TYPE, "--dlq-url", dlq],
        env,
    )
    if p.stdout.readline().strip() != "READY":
        raise SystemExit(f"the baseline did not start; see {procs.dir}/baseline.log")
    return p


def aws(moto: str, service: str):
    return boto3.client(service, endpoint_url=moto, region_name=REGION,
                        aws_access_key_id="bench", aws_secret_access_key="bench")


def wait_owned(http: str, shards: int, timeout: float = 120):
    wait_until(f"the relay to own {shards} leases", timeout,
               lambda: metric(http, "relay_leases_owned") >= shards, 0.2)


# ---- e2e on moto ----------------------------------------------------------------------------

def orders_table(ddb) -> str:
    """The `orders` table on moto, with a NEW_AND_OLD_IMAGES stream; its stream ARN."""
    return ddb.create_table(
        TableName="orders", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "order_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "order_id", "AttributeType": "S"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]["LatestStreamArn"]


def order(n: int, version: int) -> dict:
    item = json.loads(json.dumps(NEW_IMAGE if version > 1 else OLD_IMAGE))
    item["order_id"] = {"S": f"ord-{n:08d}"}
    item["version"] = {"N": str(version)}
    return item


def e2e(relay_bin: str, seconds: float, rate: float) -> dict:
    procs = Procs("e2e")
    try:
        moto = procs.server("moto", "benches/counting_moto.py")
        nakadi_relay = procs.server("nakadi-relay", "tests/servers/nakadi_server.py")
        nakadi_base = procs.server("nakadi-baseline", "tests/servers/nakadi_server.py")
        ddb, sqs = aws(moto, "dynamodb"), aws(moto, "sqs")
        stream_arn = orders_table(ddb)
        dlq_relay = sqs.create_queue(QueueName="relay-dlq")["QueueUrl"]
        dlq_base = sqs.create_queue(QueueName="baseline-dlq")["QueueUrl"]
        relay, http = start_relay(procs, relay_bin, moto, nakadi_relay, stream_arn, dlq_relay)
        wait_owned(http, 1)
        base = start_baseline(procs, moto, nakadi_base, stream_arn, dlq_base)

        writes = int(seconds * rate)
        acks: dict[tuple, float] = {}
        calls0 = get_json(f"{moto}/_bench/calls")
        cpu0 = {"relay": cpu_seconds(relay.pid), "baseline": cpu_seconds(base.pid)}
        t0 = time.time()
        # Every other write updates the order the write before created: INSERTs and MODIFYs.
        for i in range(writes):
            due = t0 + i / rate
            now = time.time()
            if due > now:
                time.sleep(due - now)
            n, version = i // 2, 1 + i % 2
            ddb.put_item(TableName="orders", Item=order(n, version))
            acks[(f"ord-{n:08d}", version)] = time.time()
        t_written = time.time()

        def arrived(url):
            return get_json(f"{url}/_test/events?limit=0")["count"] >= writes

        wait_until("every event at both Nakadi servers", 120,
                   lambda: arrived(nakadi_relay) and arrived(nakadi_base), 0.1)
        t1 = time.time()
        cpu1 = {"relay": cpu_seconds(relay.pid), "baseline": cpu_seconds(base.pid)}
        calls1 = get_json(f"{moto}/_bench/calls")
        window = t1 - t0
        result = {"writes": writes, "rate": rate, "write_seconds": t_written - t0}
        for side, url, proc in (("relay", nakadi_relay, relay), ("baseline", nakadi_base, base)):
            events = get_json(f"{url}/_test/events?meta=1")["events"]
            lat, last = [], 0.0
            for e in events:
                item = e["event"]["data"]["item"]
                key = (item["order_id"], int(item["version"]))
                lat.append((e["received_epoch"] - acks[key]) * 1000)
                last = max(last, e["received_epoch"])
            lat.sort()
            unique = len({e["eid"] for e in events})
            result[side] = {
                "events": unique,
                "events_per_s": unique / (last - t0),
                "cpu_ms_per_1000": (cpu1[side] - cpu0[side]) / unique * 1e6,
                "peak_rss_mib": rss_mib(proc.pid),
                "p50_ms": percentile(lat, 0.50),
                "p99_ms": percentile(lat, 0.99),
                "max_ms": lat[-1],
            }
        result["relay"]["requests_per_s"] = rates(calls0, calls1, window, "relay", "relay-leases")
        result["baseline"]["requests_per_s"] = rates(calls0, calls1, window, "python", None)
        return result
    finally:
        procs.stop()


def backlog(relay_bin: str, records: int) -> dict:
    """CPU per event on moto with a backlog read in one go, each side in its own run on a fresh
    moto: `records` changes (INSERTs, then a MODIFY of each) are in the stream before the reader
    starts, and its CPU is taken between 5% and 95% of its events (`drain`), so start-up and the
    tail are left out. The steady-rate e2e part pays the idle polls between writes as well; this
    one is the cost of an event itself, on the same moto as the seed design."""
    result: dict = {"records": records}
    for side in ("relay", "baseline"):
        procs = Procs(f"backlog-{side}")
        try:
            moto = procs.server("moto", "benches/counting_moto.py")
            sink = procs.server("sink", "benches/sink.py")
            ddb, sqs = aws(moto, "dynamodb"), aws(moto, "sqs")
            stream_arn = orders_table(ddb)
            dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
            # 25 items per call (BatchWriteItem's limit), each key once per call.
            for version in (1, 2):
                for start in range(0, records // 2, 25):
                    ddb.batch_write_item(RequestItems={"orders": [
                        {"PutRequest": {"Item": order(n, version)}}
                        for n in range(start, min(start + 25, records // 2))
                    ]})
            if side == "relay":
                # moto serves DynamoDB and its stream one call at a time, and building a page of
                # 1,000 large records takes it seconds (longer on a busy machine), so heartbeats
                # would time out behind the reads and the pod fence itself. Production DynamoDB
                # has no such queue; the slow timing only keeps the pod's lease while moto is
                # busy, and its few heartbeats cost next to nothing of the CPU measured.
                timing = {"RELAY_LEASE_RENEW_INTERVAL": "10s", "RELAY_LEASE_DURATION": "60s",
                          "RELAY_LEASE_CALL_TIMEOUT": "9s"}
                proc, _ = start_relay(procs, relay_bin, moto, sink, stream_arn, dlq, timing)
            else:
                proc = start_baseline(procs, moto, sink, stream_arn, dlq)
            # Sampled often: a reader takes the backlog in a few pages of up to 1,000 records.
            result[side] = drain(side, proc.pid, sink, records // 2 * 2, 600, every=0.02)
        finally:
            procs.stop()
    return result


def rates(before: dict, after: dict, seconds: float, client: str, lease_table: str | None) -> dict:
    """Requests per second by kind, for one client of the counting moto."""
    out: dict[str, float] = {}
    for key, n in after.items():
        who, target, table = key.split(" ", 2)
        if who != client:
            continue
        op = target.split(".", 1)[1]
        kind = "lease_table" if table == lease_table else op
        if kind == "PutItem" and table == "orders":
            continue
        out[kind] = out.get(kind, 0.0) + (n - before.get(key, 0)) / seconds
    return out


# ---- the ceiling on the Streams fault server ------------------------------------------------

def fault_stream(fault: str, shards: int, per_shard: int) -> str:
    arn = post_json(f"{fault}/_test/streams", {
        "table": "orders", "shards": shards,
        "key_schema": [{"AttributeName": "order_id", "KeyType": "HASH"}],
    })["stream_arn"]
    new, old = json.loads(json.dumps(NEW_IMAGE)), json.loads(json.dumps(OLD_IMAGE))
    new["order_id"] = old["order_id"] = {"S": "ord-{n}"}
    post_json(f"{fault}/_test/generate", {
        "stream_arn": arn, "records_per_shard": per_shard,
        "record": {"keys": {"order_id": {"S": "ord-{n}"}}, "new_image": new, "old_image": old},
    })
    return arn


def drain(name: str, pid: int, sink: str, total: int, timeout: float, every: float = 0.2) -> dict:
    """Samples the sink's count and the process's CPU until every event arrived; the figures
    come from the middle of the run (5% to 95% of the events), away from start-up and tail."""
    samples = []

    def done():
        n = get_json(f"{sink}/_bench/count")["events"]
        samples.append((time.time(), n, cpu_seconds(pid)))
        return n >= total

    wait_until(f"{name}: {total} events at the sink", timeout, done, every)
    lo = next(s for s in samples if s[1] >= total * 0.05)
    hi = next(s for s in samples if s[1] >= total * 0.95)
    events, cpu, wall = hi[1] - lo[1], hi[2] - lo[2], hi[0] - lo[0]
    return {
        "events": total,
        "wall_events_per_s": events / wall,
        "cpu_us_per_event": cpu / events * 1e6,
        "events_per_cpu_s": events / cpu,
        "cpu_share": cpu / wall,
        "peak_rss_mib": rss_mib(pid),
    }


def ceiling(relay_bin: str, shards: int, per_shard: int, base_shards: int, base_per_shard: int) -> dict:
    result = {"shards": shards, "records": shards * per_shard,
              "item_bytes": len(json.dumps(NEW_IMAGE, separators=(",", ":"), ensure_ascii=False).encode()),
              "record_bytes": len(json.dumps(FIXTURE, separators=(",", ":"), ensure_ascii=False).encode())}
    for side in ("relay", "baseline"):
        procs = Procs(f"ceiling-{side}")
        try:
            moto = procs.server("moto", "benches/counting_moto.py")
            fault = procs.server("streams", "tests/servers/streams_fault_server.py")
            sink = procs.server("sink", "benches/sink.py")
            dlq = aws(moto, "sqs").create_queue(QueueName="dlq")["QueueUrl"]
            if side == "relay":
                arn = fault_stream(fault, shards, per_shard)
                proc, http = start_relay(procs, relay_bin, moto, sink, arn, dlq,
                                         {"AWS_ENDPOINT_URL_DYNAMODB_STREAMS": fault})
                result[side] = drain(side, proc.pid, sink, shards * per_shard, 600)
            else:
                arn = fault_stream(fault, base_shards, base_per_shard)
                proc = start_baseline(procs, moto, sink, arn, dlq, fault)
                result[side] = drain(side, proc.pid, sink, base_shards * base_per_shard, 600)
        finally:
            procs.stop()
    return result


# ---- many shards: memory and request rates --------------------------------------------------

def many_shards(relay_bin: str, shards: int, per_shard: int, idle_seconds: float) -> dict:
    procs = Procs(f"shards-{shards}")
    try:
        moto = procs.server("moto", "benches/counting_moto.py")
        fault = procs.server("streams", "tests/servers/streams_fault_server.py")
        sink = procs.server("sink", "benches/sink.py")
        dlq = aws(moto, "sqs").create_queue(QueueName="dlq")["QueueUrl"]
        arn = fault_stream(fault, shards, per_shard)
        # A round renews every owned lease: with a thousand leases on moto, which serves DynamoDB
        # one call at a time, 2 s rounds would keep it saturated. Production DynamoDB has no such
        # limit; the rates below scale to the default by renew interval.
        # moto's Scan of a thousand leases also outlasts the default 1 s lease-call timeout.
        timing = {"RELAY_LEASE_RENEW_INTERVAL": "4s", "RELAY_LEASE_DURATION": "15s",
                  "RELAY_LEASE_CALL_TIMEOUT": "3s"}
        relay, http = start_relay(procs, relay_bin, moto, sink, arn, dlq,
                                  {"AWS_ENDPOINT_URL_DYNAMODB_STREAMS": fault, **timing})
        wait_owned(http, shards, 300)
        wait_until("every record at the sink", 300,
                   lambda: get_json(f"{sink}/_bench/count")["events"] >= shards * per_shard, 0.2)
        calls0, streams0 = get_json(f"{moto}/_bench/calls"), get_json(f"{fault}/_test/calls")
        cpu0, t0 = cpu_seconds(relay.pid), time.time()
        # Idle on purpose: the steady state every pod is in most of the time.
        time.sleep(idle_seconds)
        calls1, streams1 = get_json(f"{moto}/_bench/calls"), get_json(f"{fault}/_test/calls")
        cpu1, t1 = cpu_seconds(relay.pid), time.time()
        window = t1 - t0
        req = rates(calls0, calls1, window, "relay", "relay-leases")
        for op in ("DescribeStream", "GetRecords", "GetShardIterator"):
            req[op] = (streams1.get(op, 0) - streams0.get(op, 0)) / window
        return {
            "shards": shards,
            "owned": int(metric(http, "relay_leases_owned")),
            "peak_rss_mib": rss_mib(relay.pid),
            "idle_rss_mib": rss_mib(relay.pid, "VmRSS"),
            "idle_cpu_share": (cpu1 - cpu0) / window,
            "requests_per_s": req,
            "renew_interval_s": 4,
        }
    finally:
        procs.stop()


# ---- what an idle shard costs ---------------------------------------------------------------

MONTH_S = 30 * 24 * 3600
# us-east-1 on-demand list prices; the free tier is left out (it is per account, not per shard).
# Each GetRecords call is one streams read request unit; DescribeStream and GetShardIterator are
# counted but not billed.
USD_PER_GETRECORDS = 0.02 / 100_000
USD_PER_WRITE_UNIT = 0.625 / 1_000_000
USD_PER_READ_UNIT = 0.125 / 1_000_000
PRICES = ("us-east-1 on-demand list prices, free tier ignored, month = 30 days: GetRecords $0.02 "
          "per 100,000 calls; DynamoDB $0.625 per million write request units, $0.125 per million "
          "read request units. Lease-table units by DynamoDB's size rules, counted in "
          "benches/counting_moto.py (a Scan: its items' bytes per 4 KB, strongly consistent; an "
          "UpdateItem: 1 unit, lease items being under 1 KB).")
STREAM_OPS = ("GetRecords", "GetShardIterator", "DescribeStream", "ListStreams")


def quiet_write(fault: str, arn: str, shard_id: str, key: str) -> float:
    """One INSERT to one shard; returns when the fault server acknowledged it (the record is
    readable from then on, as a PutItem's stream record is once acknowledged)."""
    item = json.loads(json.dumps(NEW_IMAGE))
    item["order_id"] = {"S": key}
    post_json(f"{fault}/_test/records", {"stream_arn": arn, "records": [
        {"shard_id": shard_id, "keys": {"order_id": {"S": key}}, "new_image": item}]})
    return time.time()


# moto serves DynamoDB one call at a time and scans a thousand lease items in about a second
# (DynamoDB returns such a page in milliseconds); with the default 1.5 s rounds a heartbeat waits
# behind the Scan past its timeout and the pod fences itself. So the 1,000-shard comparison runs
# slower rounds, and the 100 shards it is compared with too; and polls idle shards every 5 s, so
# that 1,000 shards' GetRecords leave moto a core (GetRecords are counted at 100 shards instead).
MOTO_1000_TIMING = {"RELAY_LEASE_RENEW_INTERVAL": "5s", "RELAY_LEASE_DURATION": "20s",
                    "RELAY_LEASE_CALL_TIMEOUT": "4s", "RELAY_IDLE_POLL_INTERVAL": "5s"}


@dataclass
class IdlePod:
    moto: str
    fault: str
    sink: str
    relay: subprocess.Popen
    http: str
    stream_arn: str
    shard_ids: list


def idle_pod(procs: Procs, relay_bin: str, shards: int, extra: dict, own_timeout: float) -> IdlePod:
    """Moto, a sink and the Streams fault server with `shards` shards that never had a record,
    and one relay that owns them all once this returns (the cost part's setup)."""
    moto = procs.server("moto", "benches/counting_moto.py")
    fault = procs.server("streams", "tests/servers/streams_fault_server.py")
    sink = procs.server("sink", "benches/sink.py", "--arrivals")
    dlq = aws(moto, "sqs").create_queue(QueueName="dlq")["QueueUrl"]
    created = post_json(f"{fault}/_test/streams", {
        "table": "orders", "shards": shards,
        "key_schema": [{"AttributeName": "order_id", "KeyType": "HASH"}],
    })
    relay, http = start_relay(procs, relay_bin, moto, sink, created["stream_arn"], dlq,
                              {"AWS_ENDPOINT_URL_DYNAMODB_STREAMS": fault, **extra})
    wait_owned(http, shards, own_timeout)
    return IdlePod(moto, fault, sink, relay, http, created["stream_arn"], created["shard_ids"])


def cost(relay_bin: str, shards: int, idle_seconds: float, quiet_seconds: float, samples: int,
         spread_seconds: float, idle_poll: str | None = None, settle: float = 5,
         timing: dict | None = None) -> dict:
    """One pod owning `shards` shards that never had a record. After `settle` seconds (the
    take's writes done, the back-off at its longest) `idle_seconds` of idle are measured. Then,
    once every shard has been polled for `quiet_seconds` without a write, `samples` single
    records go to as many distinct shards at random times over `spread_seconds`."""
    procs = Procs(f"cost-{shards}" + (f"-{idle_poll}" if idle_poll else "") + ("-slow-rounds" if timing else ""))
    try:
        # Default lease timing unless told: the heartbeat protocol's lease-table writes do not
        # grow with the leases owned, so moto keeps up with 100 and the figures are production's.
        extra = dict(timing or {})
        if idle_poll:
            extra["RELAY_IDLE_POLL_INTERVAL"] = idle_poll
        pod = idle_pod(procs, relay_bin, shards, extra, 300)
        moto, fault, sink, relay, http = pod.moto, pod.fault, pod.sink, pod.relay, pod.http
        arn, shard_ids = pod.stream_arn, pod.shard_ids
        t_owned = time.time()
        time.sleep(settle)

        def snapshot():
            return (time.time(), cpu_seconds(relay.pid), get_json(f"{fault}/_test/calls"),
                    get_json(f"{moto}/_bench/calls"), get_json(f"{moto}/_bench/units"))

        t0, cpu0, streams0, calls0, units0 = snapshot()
        time.sleep(idle_seconds)
        t1, cpu1, streams1, calls1, units1 = snapshot()
        window = t1 - t0
        shard_s = window * shards

        per_pod_s: dict[str, float] = {}
        for op in STREAM_OPS:
            n = streams1.get(op, 0) - streams0.get(op, 0)
            if n:
                per_pod_s[op] = n / window
        read_units = write_units = 0.0
        for key, n in calls1.items():
            who, target, table = key.split(" ", 2)
            if who != "relay" or table != "relay-leases":
                continue
            op = target.split(".", 1)[1]
            if n - calls0.get(key, 0):
                per_pod_s[f"lease {op}"] = (n - calls0.get(key, 0)) / window
            u0 = units0.get(key, {"read": 0, "write": 0})
            read_units += units1[key]["read"] - u0["read"]
            write_units += units1[key]["write"] - u0["write"]
        getrecords = streams1.get("GetRecords", 0) - streams0.get("GetRecords", 0)
        cpu = cpu1 - cpu0
        usd = {
            "GetRecords": getrecords / shard_s * MONTH_S * USD_PER_GETRECORDS,
            "lease writes": write_units / shard_s * MONTH_S * USD_PER_WRITE_UNIT,
            "lease reads": read_units / shard_s * MONTH_S * USD_PER_READ_UNIT,
        }
        result = {
            "shards": shards,
            "owned": int(metric(http, "relay_leases_owned")),
            "idle_poll": idle_poll or (timing or {}).get("RELAY_IDLE_POLL_INTERVAL", "default"),
            "renew_interval": (timing or {}).get("RELAY_LEASE_RENEW_INTERVAL", "1.5s (default)"),
            "window_s": window,
            "requests_per_pod_s": per_pod_s,
            "requests_per_shard_s": {op: r / shards for op, r in per_pod_s.items()},
            "lease_write_units_per_pod_s": write_units / window,
            "lease_read_units_per_pod_s": read_units / window,
            "lease_item_max_bytes": units1["max_item_bytes"].get("relay-leases", 0),
            "cpu_ms_per_shard_s": cpu / shard_s * 1e3,
            "cpu_us_per_getrecords": cpu / getrecords * 1e6 if getrecords else None,
            "cpu_share": cpu / window,
            "usd_per_shard_month": usd,
            "usd_per_shard_month_total": sum(usd.values()),
        }

        if samples:
            # A quiet shard (issue #21): no write for quiet_seconds. No shard ever had one, and
            # the relay has polled them all since t_owned.
            time.sleep(max(0.0, t_owned + quiet_seconds - time.time()))
            # Random shards at random times: a write lands anywhere in its shard's poll cycle,
            # as production writes do; each shard is written once, so each one is still quiet.
            picked = random.sample(shard_ids, samples)
            offsets = sorted(random.uniform(0, spread_seconds) for _ in picked)
            start, acked = time.time(), {}
            for i, (shard_id, offset) in enumerate(zip(picked, offsets)):
                time.sleep(max(0.0, start + offset - time.time()))
                key = f"quiet-{i:04d}"
                acked[key] = quiet_write(fault, arn, shard_id, key)
            arrivals = wait_until(
                f"{samples} quiet-shard writes at the sink", 60,
                lambda: (a := get_json(f"{sink}/_bench/arrivals")) and len(a) >= samples and a, 0.2)
            lat = sorted((arrivals[k] - t) * 1000 for k, t in acked.items())
            result.update({
                "quiet_s": quiet_seconds,
                "quiet_samples": samples,
                "quiet_p50_ms": percentile(lat, 0.50),
                "quiet_p90_ms": percentile(lat, 0.90),
                "quiet_max_ms": lat[-1],
            })
        return result
    finally:
        procs.stop()


def check_cost(c: dict):
    """--smoke: the figures exist and are sane; no timing is checked (CI machines vary)."""
    for name in ("cpu_ms_per_shard_s", "usd_per_shard_month_total", "lease_write_units_per_pod_s",
                 "lease_read_units_per_pod_s"):
        v = c[name]
        assert isinstance(v, float) and math.isfinite(v) and v >= 0, (name, v)
    assert c["owned"] == c["shards"], c
    assert c["requests_per_shard_s"].get("GetRecords", 0) > 0, c
    # counting_moto bills an UpdateItem as one unit because lease items are under 1 KB.
    assert 0 < c["lease_item_max_bytes"] < 1024, c
    if "quiet_samples" in c:
        assert 0 < c["quiet_p50_ms"] <= c["quiet_max_ms"] < 60_000, c


def cost_rows(c: dict) -> list[str]:
    q = c["requests_per_shard_s"]
    usd = c["usd_per_shard_month"]
    lease = {op.split(" ", 1)[1]: r for op, r in c["requests_per_pod_s"].items() if op.startswith("lease ")}
    rows = [
        f"| **what an idle shard costs: {c['owned']} idle shards, one pod, idle poll {c['idle_poll']}, "
        f"{c['window_s']:.0f} s** | | | |",
        f"| GetRecords / GetShardIterator / DescribeStream per shard-second | {q.get('GetRecords', 0):.2f} / "
        f"{q.get('GetShardIterator', 0):.4f} / {q.get('DescribeStream', 0):.4f} | | |",
        "| lease-table calls per pod-second | "
        + (", ".join(f"{op} {r:.2f}" for op, r in sorted(lease.items())) or "none")
        + f" | | {c['lease_write_units_per_pod_s']:.2f} write, {c['lease_read_units_per_pod_s']:.2f} read units/s |",
        f"| $ per idle shard-month | {c['usd_per_shard_month_total']:.3f} (GetRecords {usd['GetRecords']:.3f}, "
        f"lease writes {usd['lease writes']:.4f}, reads {usd['lease reads']:.4f}) | | target ≤ $1.00: "
        f"{'met' if c['usd_per_shard_month_total'] <= 1 else 'NOT met'} |",
        f"| relay CPU per idle shard-second | {c['cpu_ms_per_shard_s']:.3f} ms | | target ≤ 0.15 ms: "
        f"{'met' if c['cpu_ms_per_shard_s'] <= 0.15 else 'NOT met'} |",
        f"| relay CPU per GetRecords call | {c['cpu_us_per_getrecords'] or 0:.0f} µs | | |",
    ]
    if "quiet_samples" in c:
        rows.append(
            f"| quiet-shard write → sink, p50 / p90 / max ({c['quiet_samples']} shards quiet ≥ {c['quiet_s']:.0f} s) "
            f"| {c['quiet_p50_ms']:.0f} / {c['quiet_p90_ms']:.0f} / {c['quiet_max_ms']:.0f} ms | | target p50 ≤ 400 ms: "
            f"{'met' if c['quiet_p50_ms'] <= 400 else 'NOT met'} |")
    return rows


def interval_table(runs: list) -> str:
    rows = ["| RELAY_IDLE_POLL_INTERVAL | GetRecords per shard-second | $ per idle shard-month "
            "(GetRecords + lease table) | quiet-shard p50 / max | relay CPU per shard-second |",
            "|---|---|---|---|---|"]
    for c in runs:
        rows.append(
            f"| {c['idle_poll']} | {c['requests_per_shard_s'].get('GetRecords', 0):.2f} "
            f"| {c['usd_per_shard_month_total']:.3f} ({c['usd_per_shard_month']['GetRecords']:.3f} + "
            f"{c['usd_per_shard_month']['lease writes'] + c['usd_per_shard_month']['lease reads']:.3f}) "
            f"| {c.get('quiet_p50_ms', 0):.0f} / {c.get('quiet_max_ms', 0):.0f} ms "
            f"| {c['cpu_ms_per_shard_s']:.3f} ms |")
    return "\n".join(rows)


# ---- the table ------------------------------------------------------------------------------

def table(r: dict) -> str:
    rows = ["| measurement | relay | Python baseline (seed design) | ratio / target |", "|---|---|---|---|"]
    if "e2e" in r:
        e, a, b = r["e2e"], r["e2e"]["relay"], r["e2e"]["baseline"]
        rows += [
            f"| **moto, {e['writes']} writes at {e['rate']:.0f}/s ({e['writes'] / e['write_seconds']:.0f}/s achieved), "
            "side by side** | | | |",
            f"| events/s | {a['events_per_s']:.0f} | {b['events_per_s']:.0f} | |",
            f"| CPU-seconds per 1,000 events | {a['cpu_ms_per_1000'] / 1000:.3f} | {b['cpu_ms_per_1000'] / 1000:.3f} "
            f"| {b['cpu_ms_per_1000'] / a['cpu_ms_per_1000']:.0f}× less |",
            f"| peak RSS | {a['peak_rss_mib']:.1f} MiB | {b['peak_rss_mib']:.1f} MiB | |",
            f"| latency write → Nakadi p50 | {a['p50_ms']:.1f} ms | {b['p50_ms']:.1f} ms "
            f"| target ≤ 50 ms and ≤ baseline: {'met' if a['p50_ms'] <= min(50, b['p50_ms']) else 'NOT met'} |",
            f"| latency write → Nakadi p99 | {a['p99_ms']:.1f} ms | {b['p99_ms']:.1f} ms "
            f"| target ≤ ½ baseline: {'met' if a['p99_ms'] <= b['p99_ms'] / 2 else 'NOT met'} |",
            f"| latency max | {a['max_ms']:.0f} ms | {b['max_ms']:.0f} ms | |",
        ]
    if "backlog" in r:
        k, a, b = r["backlog"], r["backlog"]["relay"], r["backlog"]["baseline"]
        ratio = b["cpu_us_per_event"] / a["cpu_us_per_event"]
        rows += [
            f"| **moto, a backlog of {k['records']:,} changes read in one go (start-up and tail left out), "
            "each side on its own moto** | | | |",
            f"| CPU per event | {a['cpu_us_per_event']:.1f} µs | {b['cpu_us_per_event']:.0f} µs "
            f"| {ratio:.0f}× less (target ≥ 50×: {'met' if ratio >= 50 else 'NOT met'}) |",
            f"| wall-clock events/s (moto serves the stream) | {a['wall_events_per_s']:,.0f} "
            f"| {b['wall_events_per_s']:,.0f} | |",
        ]
    if "ceiling" in r:
        c, a, b = r["ceiling"], r["ceiling"]["relay"], r["ceiling"]["baseline"]
        rows += [
            f"| **ceiling: Streams fault server → sink; MODIFY of a {c['item_bytes']:,} B order "
            f"({c['record_bytes']:,} B record with both images)** "
            f"| {c['shards']} shards, {c['records']} records | {b['events']} records | |",
            f"| CPU per event | {a['cpu_us_per_event']:.1f} µs | {b['cpu_us_per_event']:.0f} µs "
            f"| {b['cpu_us_per_event'] / a['cpu_us_per_event']:.0f}× less (target ≥ 50×) |",
            f"| events per CPU-second (= per core) | {a['events_per_cpu_s']:,.0f} | {b['events_per_cpu_s']:,.0f} "
            f"| target ≥ 100,000 |",
            f"| wall-clock events/s (shared 2 cores) | {a['wall_events_per_s']:,.0f} | {b['wall_events_per_s']:,.0f} | |",
            f"| cores used | {a['cpu_share']:.2f} | {b['cpu_share']:.2f} | |",
            f"| peak RSS | {a['peak_rss_mib']:.1f} MiB | {b['peak_rss_mib']:.1f} MiB | |",
        ]
    if "shards" in r:
        s = r["shards"]
        q = s["requests_per_s"]
        rows += [
            f"| **{s['owned']} shards owned by one pod (idle, renew every {s['renew_interval_s']} s)** | | | |",
            f"| peak RSS (while reading the backlog) / idle RSS | {s['peak_rss_mib']:.1f} / {s['idle_rss_mib']:.1f} MiB "
            "| | target ≤ 64 MiB |",
            f"| idle CPU | {s['idle_cpu_share'] * 100:.1f}% of a core | | |",
            f"| lease-table requests/s | {q.get('lease_table', 0):.1f} | | "
            f"{q.get('lease_table', 0) / s['owned'] * s['renew_interval_s']:.2f} per owned shard and round |",
            f"| DescribeStream/s | {q.get('DescribeStream', 0):.3f} | | |",
            f"| GetRecords/s | {q.get('GetRecords', 0):.0f} | | {q.get('GetRecords', 0) / s['owned']:.1f} per shard |",
        ]
    if "cost" in r:
        rows += cost_rows(r["cost"])
    if "cost_1000" in r:
        a, b = r["cost_100_slow"], r["cost_1000"]
        rows += [
            f"| **{a['shards']} and {b['shards']} idle shards, one pod, renew every {b['renew_interval']} "
            "(moto's pace): request counts only** | | | |",
            f"| lease-table write units per pod-second, {a['shards']} vs {b['shards']} shards "
            f"| {a['lease_write_units_per_pod_s']:.2f} vs {b['lease_write_units_per_pod_s']:.2f} | "
            "| the same within noise (issue #21) |",
            f"| lease-table calls per pod-second at {b['shards']} | "
            + ", ".join(f"{op.split(' ', 1)[1]} {v:.2f}" for op, v in sorted(b["requests_per_pod_s"].items())
                        if op.startswith("lease ")) + " | | |",
            f"| lease-table read units per pod-second (the Scan reads every lease) | "
            f"{a['lease_read_units_per_pod_s']:.2f} vs {b['lease_read_units_per_pod_s']:.2f} | | grows with the stream |",
            f"| relay leases owned at the end of the window | {a['owned']} / {b['owned']} | | |",
        ]
    if "e2e" in r:
        q = r["e2e"]["relay"]["requests_per_s"]
        rows.append(
            "| moto run, 1 shard: lease-table / DescribeStream / GetRecords per s | "
            f"{q.get('lease_table', 0):.2f} / {q.get('DescribeStream', 0):.3f} / {q.get('GetRecords', 0):.1f} | "
            f"– / {r['e2e']['baseline']['requests_per_s'].get('DescribeStream', 0):.3f} / "
            f"{r['e2e']['baseline']['requests_per_s'].get('GetRecords', 0):.1f} | |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--relay", default=str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
                                            / "release" / "dynamodb-nakadi-relay"))
    ap.add_argument("--only", default="e2e,backlog,ceiling,shards,cost",
                    help="comma-separated parts: e2e, backlog, ceiling, shards, cost")
    ap.add_argument("--idle-poll", metavar="LIST",
                    help="comma-separated RELAY_IDLE_POLL_INTERVAL values (e.g. 250ms,600ms,1s): the cost "
                         "part once per value instead of once at the default, and the interval table")
    ap.add_argument("--json", type=Path, default=OUT / "results.json")
    args = ap.parse_args()
    if not Path(args.relay).exists():
        raise SystemExit(f"{args.relay} is missing: build it (make bench does)")
    os.environ.update(AWS_ENV)
    parts = set(args.only.split(","))
    known = {"e2e", "backlog", "ceiling", "shards", "cost"}
    if parts - known:
        raise SystemExit(f"unknown parts in --only: {', '.join(sorted(parts - known))}")
    results: dict = {}
    if "e2e" in parts:
        results["e2e"] = e2e(args.relay, 5 if args.smoke else 60, 100)
        if args.smoke:
            # The relay's own GetRecords count as the relay's, not the baseline's.
            assert results["e2e"]["relay"]["requests_per_s"].get("GetRecords", 0) > 0, results["e2e"]
    if "backlog" in parts:
        results["backlog"] = backlog(args.relay, 2_000 if args.smoke else 10_000)
    if "ceiling" in parts:
        results["ceiling"] = (ceiling(args.relay, 4, 2_000, 1, 1_000) if args.smoke
                              else ceiling(args.relay, 16, 20_000, 4, 5_000))
    if "shards" in parts:
        results["shards"] = (many_shards(args.relay, 50, 10, 5) if args.smoke
                             else many_shards(args.relay, 1000, 10, 30))
    if "cost" in parts:
        # The quiet shard had no write for 60 s; the smoke waits 5 s to stay short.
        params = (dict(shards=10, idle_seconds=4, quiet_seconds=5, samples=10, spread_seconds=3, settle=1)
                  if args.smoke else
                  dict(shards=100, idle_seconds=55, quiet_seconds=60, samples=80, spread_seconds=30))
        if args.idle_poll:
            results["interval_table"] = [cost(args.relay, idle_poll=v, **params)
                                         for v in args.idle_poll.split(",")]
        else:
            results["cost"] = cost(args.relay, **params)
            if not args.smoke:
                # The fault server cannot answer 1,000 shards' polls in time: counts only.
                results["cost_100_slow"] = cost(args.relay, 100, 30, 0, 0, 0, timing=MOTO_1000_TIMING)
                results["cost_1000"] = cost(args.relay, 1000, 30, 0, 0, 0, timing=MOTO_1000_TIMING)
        if args.smoke:
            for c in results.get("interval_table", []) + [results[k] for k in ("cost",) if k in results]:
                check_cost(c)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    if results.keys() - {"interval_table"}:
        print(table(results))
        print()
    if "interval_table" in results:
        print(interval_table(results["interval_table"]))
        print()
    if "cost" in parts:
        print("Prices: " + PRICES)
        if args.smoke:
            print("--smoke: 10 shards, quiet for 5 s before their write (the issue's quiet shard: 60 s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
