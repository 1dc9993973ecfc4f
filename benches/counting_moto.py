#!/usr/bin/env python3
"""moto server for the benchmarks: tests/servers/moto_server.py plus request counts.

The lease table's and DescribeStream's request rates are AWS cost, and the issue asks for them
per pod. moto keeps no counts, so this wraps the same application with the same lock and counts
every AWS JSON request by (client, operation, table). The client is "relay" for the Rust SDK
(its User-Agent names `aws-sdk-rust`) and "python" for boto3, so the relay's calls are told apart
from the baseline's and the load generator's on one server.

CLI: counting_moto.py [--host 127.0.0.1] [--port 0]; prints `LISTENING <port>` first.
GET /_bench/calls -> {"relay DynamoDB_20120810.UpdateItem relay-leases": n, ...}
"""

import argparse
import io
import json
import os
import sys
import threading
from collections import Counter

from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

# Why these are served one at a time: see tests/servers/moto_server.py (conditional writes).
SERIALIZED_TARGETS = ("DynamoDB_20120810.", "DynamoDBStreams_20120810.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    calls: Counter = Counter()
    calls_lock = threading.Lock()

    def counted(environ, start_response):
        if environ.get("PATH_INFO") == "/_bench/calls":
            with calls_lock:
                body = json.dumps(dict(calls)).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith(SERIALIZED_TARGETS):
            return app(environ, start_response)
        # The body is read here to learn the table, then handed on unchanged.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        try:
            table = json.loads(body or b"{}").get("TableName", "-")
        except ValueError:
            table = "-"
        client = "relay" if "aws-sdk-rust" in environ.get("HTTP_USER_AGENT", "") else "python"
        with calls_lock:
            calls[f"{client} {target} {table}"] += 1
        environ["wsgi.input"] = io.BytesIO(body)
        with lock:
            # The body is produced inside the lock too: werkzeug may build it lazily.
            return list(app(environ, start_response))

    server = make_server(args.host, args.port, counted, threaded=True, request_handler=MotoRequestHandler)
    os.environ.setdefault("MOTO_PORT", str(server.server_port))
    print(f"LISTENING {server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
