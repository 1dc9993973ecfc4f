#!/usr/bin/env python3
"""moto server (DynamoDB, DynamoDB Streams, SQS) for the tests and the demo, with one fix.

moto's DynamoDB does not make a conditional write atomic: two UpdateItem calls with the same
`counter = :seen` condition, arriving at once on two server threads, both succeed (seen here: two
relays both "took" one lease). Real DynamoDB evaluates the condition and writes atomically per
item, and the lease protocol's fencing depends on that. So DynamoDB and DynamoDB Streams calls are
served one at a time here; everything else (SQS long polls above all) stays concurrent.

CLI: moto_server.py [--host 127.0.0.1] [--port 0]; prints `LISTENING <port>` first on stdout.
benches/counting_moto.py imports `serialized_app`, `is_serialized` and `serve` from here.
"""

import argparse
import os
import sys
import threading

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

    def serialized(environ, start_response):
        if is_serialized(environ):
            with lock:
                # The body is produced inside the lock too: werkzeug may build it lazily.
                return list(app(environ, start_response))
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
