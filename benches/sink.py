#!/usr/bin/env python3
"""A minimal Nakadi publishing endpoint for the ceiling benchmark.

The Nakadi test server parses and keeps every event, which in Python costs more per event than
the relay spends in all; at the relay's ceiling it would be the bottleneck and take the CPU the
relay needs on a two-core machine. This one only answers 200 and counts events (the `"eid":`
keys of the body, gunzipped when needed).

With --arrivals it also notes when each event first arrived, by the `order_id` of its item, for
the cost part's quiet-shard latency. That parses every body, which the ceiling cannot afford, so
it is off by default.

CLI: sink.py [--port 0] [--arrivals]; prints `LISTENING <port>` first.
GET /_bench/count    -> {"events": n, "requests": n, "bytes": n}
GET /_bench/arrivals -> {"<order_id>": <epoch seconds of its first arrival>, ...} (--arrivals)
"""

import argparse
import gzip
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"events": 0, "requests": 0, "bytes": 0}
arrivals: dict[str, float] = {}
record_arrivals = False
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, as the relay's HTTP client expects of Nakadi.
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, body=b"", content_type="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        # Taken before the body is decoded, so the parsing below adds nothing to a latency.
        now = time.time()
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        keys = []
        if record_arrivals:
            for event in json.loads(body):
                order_id = (event.get("data") or {}).get("item", {}).get("order_id")
                if order_id is not None:
                    keys.append(str(order_id))
        with lock:
            counts["events"] += body.count(b'"eid":')
            counts["requests"] += 1
            counts["bytes"] += len(body)
            for k in keys:
                # The first arrival: a redelivery later says nothing about latency.
                arrivals.setdefault(k, now)
        self.reply()

    def do_GET(self):
        with lock:
            body = json.dumps(arrivals if self.path.startswith("/_bench/arrivals") else counts)
        self.reply(body.encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--arrivals", action="store_true")
    args = ap.parse_args()
    global record_arrivals
    record_arrivals = args.arrivals
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
