"""A browser's push service, for the push product's tests.

It makes a browser's keys (a P-256 key pair and a 16-byte authentication secret),
prints them as one JSON line ({"port", "p256dh", "auth"}), and then takes Web Push
requests as a push service would: it checks the VAPID signature (RFC 8292) with the
key the request names, decrypts the body (RFC 8291, aes128gcm) with http_ece -- an
implementation independent of the server's -- and keeps what it got. POST paths:

  /ok/<name>    201 Created
  /gone/<name>  410 Gone (the subscription expired)
  /fail/<name>  500

GET /received answers everything taken so far as a JSON list.
"""

import base64
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


key = ec.generate_private_key(ec.SECP256R1())
public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
auth = os.urandom(16)
received = []
lock = threading.Lock()


def vapid(header, origin):
    """Checks an `Authorization: vapid t=..., k=...` header; returns its claims."""
    if not header.startswith("vapid "):
        raise ValueError("not a vapid authorization: %r" % header)
    parts = dict(p.strip().split("=", 1) for p in header[len("vapid "):].split(","))
    token, k = parts["t"], b64d(parts["k"])
    signer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), k)
    head, claims, sig = token.split(".")
    sig = b64d(sig)
    der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    signer.verify(der, (head + "." + claims).encode(), ec.ECDSA(hashes.SHA256()))
    if json.loads(b64d(head))["alg"] != "ES256":
        raise ValueError("not ES256")
    claims = json.loads(b64d(claims))
    if claims["aud"] != origin:
        raise ValueError("aud %r is not %r" % (claims["aud"], origin))
    return claims, parts["k"]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        with lock:
            body = json.dumps(received).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(n)
        got = {
            "path": self.path,
            "ttl": self.headers.get("ttl"),
            "urgency": self.headers.get("urgency"),
            "topic": self.headers.get("topic"),
            "encoding": self.headers.get("content-encoding"),
            "length": len(body),
        }
        try:
            origin = "http://" + self.headers["host"]
            claims, k = vapid(self.headers.get("authorization", ""), origin)
            got["vapid_key"] = k
            got["sub"] = claims.get("sub")
            plain = http_ece.decrypt(body, private_key=key, auth_secret=auth, version="aes128gcm")
            got["message"] = json.loads(plain)
        except Exception as e:  # what went wrong is what the test reads
            got["error"] = "%s: %s" % (type(e).__name__, e)
        with lock:
            received.append(got)
        status = 201 if self.path.startswith("/ok/") else 410 if self.path.startswith("/gone/") else 500
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(json.dumps({"port": server.server_address[1], "p256dh": b64e(public), "auth": b64e(auth)}), flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()  # until the test goes away
