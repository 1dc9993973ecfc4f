#!/usr/bin/env python3
"""moto server for the benchmarks: tests/servers/moto_server.py plus request counts.

The lease table's and DescribeStream's request rates are AWS cost, and the issue asks for them
per pod. moto keeps no counts, so this wraps the tests' serialized moto application and counts
every AWS JSON request to DynamoDB and DynamoDB Streams by (client, operation, table). The client
is "relay" for the Rust SDK (its User-Agent names `aws-sdk-rust`) and "python" for boto3, so the
relay's calls are told apart from the baseline's and the load generator's on one server.

CLI: counting_moto.py [--host 127.0.0.1] [--port 0]; prints `LISTENING <port>` first.
GET /_bench/calls -> {"relay DynamoDB_20120810.UpdateItem relay-leases": n, ...}
"""

import io
import json
import sys
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "servers"))

from moto_server import is_serialized, serialized_app, serve  # noqa: E402


def counting_app():
    app = serialized_app()
    calls: Counter = Counter()
    calls_lock = threading.Lock()

    def counted(environ, start_response):
        if environ.get("PATH_INFO") == "/_bench/calls":
            with calls_lock:
                body = json.dumps(dict(calls)).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if is_serialized(environ):
            # The body is read here to learn the table, then handed on unchanged.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            try:
                table = json.loads(body or b"{}").get("TableName", "-")
            except ValueError:
                table = "-"
            client = "relay" if "aws-sdk-rust" in environ.get("HTTP_USER_AGENT", "") else "python"
            with calls_lock:
                calls[f"{client} {environ['HTTP_X_AMZ_TARGET']} {table}"] += 1
            environ["wsgi.input"] = io.BytesIO(body)
        return app(environ, start_response)

    return counted


if __name__ == "__main__":
    serve(counting_app(), __doc__.splitlines()[0])
