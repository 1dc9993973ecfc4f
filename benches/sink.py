#!/usr/bin/env python3
"""A minimal Nakadi publishing endpoint for the ceiling benchmark.

The Nakadi test server parses and keeps every event, which in Python costs more per event than
the relay spends in all; at the relay's ceiling it would be the bottleneck and take the CPU the
relay needs on a two-core machine. This one only answers 200 and counts events (the `"eid":`
keys of the body, gunzipped when needed).

CLI: sink.py [--port 0]; prints `LISTENING <port>` first.
GET /_bench/count -> {"events": n, "requests": n, "bytes": n}
"""

import argparse
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"events": 0, "requests": 0, "bytes": 0}
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
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        with lock:
            counts["events"] += body.count(b'"eid":')
            counts["requests"] += 1
            counts["bytes"] += len(body)
        self.reply()

    def do_GET(self):
        with lock:
            self.reply(json.dumps(counts).encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
