#!/usr/bin/env python3
"""moto server (DynamoDB, DynamoDB Streams, SQS) for the tests and the demo, with one fix.

moto's DynamoDB does not make a conditional write atomic: two UpdateItem calls with the same
`counter = :seen` condition, arriving at once on two server threads, both succeed (seen here: two
relays both "took" one lease). Real DynamoDB evaluates the condition and writes atomically per
item, and the lease protocol's fencing depends on that. So DynamoDB and DynamoDB Streams calls are
served one at a time here; everything else (SQS long polls above all) stays concurrent.

One test hook, for the lease table's timing and failures: DynamoDB calls of one operation whose
body contains a given text can be made to answer late (the delay is spent before the call waits
for its turn, so it holds up no other call), or to fail with a DynamoDB error without being
carried out; each such call's arrival and answer time is kept.
  POST /_test/latency {"operation": "UpdateItem", "contains": "checkpoint = :cp", "ms": 250}
  POST /_test/latency {"operation": "UpdateItem", "contains": "...", "ms": 0,
                       "error": "ProvisionedThroughputExceededException"}
  GET  /_test/latency -> {"calls": [{"start": <epoch s>, "end": <epoch s>, "body": <request>}]}

CLI: moto_server.py [--host 127.0.0.1] [--port 0]; prints `LISTENING <port>` first on stdout.
benches/counting_moto.py imports `serialized_app`, `is_serialized` and `serve` from here.
"""

import argparse
import io
import json
import os
import sys
import threading
import time

from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

SERIALIZED_TARGETS = ("DynamoDB_20120810.", "DynamoDBStreams_20120810.")


def is_serialized(environ) -> bool:
    """Whether the request is a DynamoDB or DynamoDB Streams call (served one at a time)."""
    return environ.get("HTTP_X_AMZ_TARGET", "").startswith(SERIALIZED_TARGETS)


def serialized_app():
    """The moto WSGI application, DynamoDB and DynamoDB Streams calls served one at a time."""
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    latency = {"rule": None, "calls": []}

    def test_hook(environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            latency["rule"] = json.loads(environ["wsgi.input"].read(size) or b"null")
            answer = {"rule": latency["rule"]}
        else:
            answer = {"calls": latency["calls"]}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]

    def delayed(environ) -> dict | None:
        rule = latency["rule"]
        if not rule or not environ.get("HTTP_X_AMZ_TARGET", "").endswith("." + rule["operation"]):
            return None
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size)
        # moto reads the body again: hand it a fresh stream.
        environ["wsgi.input"] = io.BytesIO(body)
        text = body.decode("utf-8", "replace")
        if rule.get("contains", "") not in text:
            return None
        call = {"start": time.time(), "body": text}
        time.sleep(rule["ms"] / 1000)
        return call

    def serialized(environ, start_response):
        if environ.get("PATH_INFO") == "/_test/latency":
            return test_hook(environ, start_response)
        if is_serialized(environ):
            call = delayed(environ)
            error = latency["rule"].get("error") if call is not None else None
            if error:
                call["end"] = time.time()
                latency["calls"].append(call)
                start_response("400 Bad Request", [("Content-Type", "application/x-amz-json-1.0")])
                body = {"__type": f"com.amazonaws.dynamodb.v20120810#{error}", "message": "injected by the test"}
                return [json.dumps(body).encode()]
            with lock:
                # The body is produced inside the lock too: werkzeug may build it lazily.
                answer = list(app(environ, start_response))
            if call is not None:
                call["end"] = time.time()
                latency["calls"].append(call)
            return answer
        return app(environ, start_response)

    return serialized


def serve(app, description: str) -> None:
    """Parses --host and --port, serves `app` threaded, prints `LISTENING <port>` first."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    os.environ.setdefault("MOTO_PORT", str(server.server_port))
    print(f"LISTENING {server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


def main() -> None:
    serve(serialized_app(), __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
