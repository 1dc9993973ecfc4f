#!/usr/bin/env python3
"""What stands between the relay and AWS, for the tests of the relay's own GetRecords path.

One loopback server that plays, as a test asks:
  * the container credentials endpoint (GET /_edge/creds, for AWS_CONTAINER_CREDENTIALS_FULL_URI):
    every call issues a new key that expires after --expiry seconds;
  * AWS's front door in front of --upstream (any other path): it checks each request's SigV4
    signature against the keys it issued (or --static-key), refuses an expired or unknown key and
    a signature off its clock by more than 5 minutes as AWS does, answers with its own `Date`,
    and passes the rest to the upstream;
  * an HTTP forward proxy (a request line with an absolute URL) and a CONNECT tunnel, counting
    what it carried and keeping each Proxy-Authorization it was sent;
  * TLS with a CA of its own (--tls-dir: writes ca.pem there), for custom trust anchors.

Stats name the client ports GetRecords came from and the port each tunnel left from, so a test
can tell a call that came through a tunnel from one that did not.

Control: POST /_edge/clock {"offset_s": N} shifts its clock; GET /_edge/stats reports what it saw.
The first stdout line is exactly `LISTENING <port>`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SKEW_LIMIT_S = 300


class Edge:
    def __init__(self, upstream: str, expiry_s: float, static_key: tuple[str, str] | None):
        self.upstream = urllib.parse.urlsplit(upstream) if upstream else None
        self.expiry_s = expiry_s
        self.lock = threading.Lock()
        self.keys: dict[str, tuple[str, str | None, float | None]] = {}
        if static_key:
            self.keys[static_key[0]] = (static_key[1], None, None)
        self.issued = 0
        self.offset_s = 0.0
        self.stats = {
            "creds_issued": 0,
            "proxied": 0,
            "proxied_get_records": 0,
            "tunnels": [],
            "proxy_authorizations": [],
            "get_records_by_key": {},
            "get_records_from_ports": [],
            "accepted": 0,
            "refused": [],
        }

    def now(self) -> float:
        return time.time() + self.offset_s

    def issue(self) -> dict:
        with self.lock:
            self.issued += 1
            n = self.issued
            key, secret, token = f"AKIAEDGE{n:08d}", f"secret-{n}-{os.urandom(8).hex()}", f"token-{n}"
            expires = time.time() + self.expiry_s
            self.keys[key] = (secret, token, expires)
            self.stats["creds_issued"] += 1
        return {
            "AccessKeyId": key,
            "SecretAccessKey": secret,
            "Token": token,
            "Expiration": dt.datetime.fromtimestamp(expires, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def check(self, method: str, path: str, headers, body: bytes) -> str | None:
        """None if the request is signed by a valid key at the server's time, else why not."""
        auth = headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return "MissingAuthenticationToken: no SigV4 signature"
        parts = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
        key, date, region, service, _ = parts["Credential"].split("/")
        with self.lock:
            known = self.keys.get(key)
        if known is None:
            return "UnrecognizedClientException: unknown key " + key
        secret, token, expires = known
        if expires is not None and time.time() > expires:
            return "ExpiredTokenException: the security token included in the request is expired"
        if token is not None and headers.get("X-Amz-Security-Token") != token:
            return "UnrecognizedClientException: wrong security token"
        amz_date = headers.get("X-Amz-Date", "")
        signed_at = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
        if abs(signed_at - self.now()) > SKEW_LIMIT_S:
            return f"InvalidSignatureException: Signature expired: {amz_date} is more than 5 minutes from the server's time"
        signed = parts["SignedHeaders"].split(";")
        canonical_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
        payload = headers.get("X-Amz-Content-Sha256") or hashlib.sha256(body).hexdigest()
        url = urllib.parse.urlsplit(path)
        canonical = "\n".join([method, url.path or "/", canonical_query(url.query), canonical_headers,
                               parts["SignedHeaders"], payload])
        scope = f"{date}/{region}/{service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        k = f"AWS4{secret}".encode()
        for part in (date, region, service, "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, parts["Signature"]):
            return "InvalidSignatureException: the request signature does not match"
        return None


def canonical_query(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    q = lambda s: urllib.parse.quote(s, safe="-_.~")
    return "&".join(f"{q(k)}={q(v)}" for k, v in sorted(pairs))


def make_handler(edge: Edge):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

        def date_time_string(self, timestamp=None):
            return super().date_time_string(edge.now())

        def reply(self, status: int, body: bytes, headers=()):
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def reply_json(self, status: int, value) -> None:
            self.reply(status, json.dumps(value).encode(), [("Content-Type", "application/json")])

        def do_GET(self):
            self.handle_any()

        def do_POST(self):
            self.handle_any()

        def note_proxy_authorization(self):
            auth = self.headers.get("Proxy-Authorization")
            if auth is not None:
                with edge.lock:
                    if auth not in edge.stats["proxy_authorizations"]:
                        edge.stats["proxy_authorizations"].append(auth)

        def do_CONNECT(self):
            """A tunnel to host:port: bytes both ways until either side closes."""
            self.note_proxy_authorization()
            host, port = self.path.rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)), timeout=30)
            except OSError as e:
                return self.reply(502, str(e).encode())
            # The tunnel's own port, which the server at its end sees as the client's.
            with edge.lock:
                edge.stats["tunnels"].append({"to": self.path, "from_port": upstream.getsockname()[1]})
            upstream.settimeout(None)
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            client = self.connection

            def pump(src, dst):
                try:
                    while data := src.recv(65536):
                        dst.sendall(data)
                except OSError:
                    pass
                for sock in (src, dst):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

            back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
            back.start()
            pump(client, upstream)
            back.join()
            upstream.close()
            self.close_connection = True

        def handle_any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path == "/_edge/creds":
                return self.reply_json(200, edge.issue())
            if self.path == "/_edge/stats":
                with edge.lock:
                    return self.reply_json(200, edge.stats)
            if self.path == "/_edge/clock":
                edge.offset_s = float(json.loads(body)["offset_s"])
                return self.reply_json(200, {"offset_s": edge.offset_s})
            target = self.headers.get("X-Amz-Target", "")
            if self.path.startswith("http://"):
                self.note_proxy_authorization()
                with edge.lock:
                    edge.stats["proxied"] += 1
                    if target.endswith(".GetRecords"):
                        edge.stats["proxied_get_records"] += 1
                return self.forward(urllib.parse.urlsplit(self.path), body)
            refused = edge.check(self.command, self.path, self.headers, body)
            if refused is not None:
                code, message = refused.split(": ", 1)
                with edge.lock:
                    edge.stats["refused"].append({"target": target, "reason": refused})
                return self.reply_json(400 if code != "MissingAuthenticationToken" else 403,
                                       {"__type": f"com.amazon.coral.service#{code}", "message": message})
            key = self.headers["Authorization"].split("Credential=", 1)[1].split("/", 1)[0]
            with edge.lock:
                edge.stats["accepted"] += 1
                if target.endswith(".GetRecords"):
                    by_key = edge.stats["get_records_by_key"]
                    by_key[key] = by_key.get(key, 0) + 1
                    port = self.client_address[1]
                    if port not in edge.stats["get_records_from_ports"]:
                        edge.stats["get_records_from_ports"].append(port)
            return self.forward(edge.upstream._replace(path=self.path), body)

        def forward(self, url, body: bytes):
            conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "connection", "proxy-connection", "keep-alive")}
            headers["Host"] = url.netloc
            try:
                path = url.path or "/"
                if url.query:
                    path += "?" + url.query
                conn.request(self.command, path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                skipped = ("content-length", "transfer-encoding", "connection", "date", "server", "keep-alive")
                self.reply(r.status, data, [(k, v) for k, v in r.getheaders() if k.lower() not in skipped])
            finally:
                conn.close()

    return Handler


def tls_context(directory: str) -> ssl.SSLContext:
    """A CA of its own and a certificate for localhost and 127.0.0.1 signed by it; ca.pem is
    written to `directory` for the client to trust."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aws edge test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    os.makedirs(directory, exist_ok=True)
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)
    with open(os.path.join(directory, "ca.pem"), "wb") as f:
        f.write(pem(ca))
    chain, key_file = os.path.join(directory, "server.pem"), os.path.join(directory, "server.key")
    with open(chain, "wb") as f:
        f.write(pem(cert) + pem(ca))
    with open(key_file, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key_file)
    return ctx


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--upstream", default="", help="where signed requests go, e.g. http://127.0.0.1:5000")
    ap.add_argument("--expiry", type=float, default=30.0, help="seconds each issued key is valid")
    ap.add_argument("--static-key", default="", help="KEY:SECRET also accepted (no token)")
    ap.add_argument("--tls-dir", default="", help="serve TLS; ca.pem is written here")
    args = ap.parse_args(argv)
    static = tuple(args.static_key.split(":", 1)) if args.static_key else None
    edge = Edge(args.upstream, args.expiry, static)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(edge))
    server.daemon_threads = True
    if args.tls_dir:
        server.socket = tls_context(args.tls_dir).wrap_socket(server.socket, server_side=True)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
