"""`digitsjax serve`: a page to draw a digit on, and the JSON API behind it.

The standard library's threading HTTP server is enough for one page and one endpoint. The page
(`static/index.html`, no external resources, so it works offline) posts the canvas as a PNG to
`POST /api/predict`, which runs it through the same `Network` as `digitsjax predict`:

    request   {"image": "<PNG or JPEG, base64 or a data: URL>"}
    response  {"digit": d, "probabilities": [10 floats], "input": [28 rows of 28 floats]}

Every error, the standard library parser's own included (a malformed request line, an unknown
method, oversized headers), answers `{"error": "..."}` as application/json, with 400 (malformed
request), 404, 405 (with the path's `Allow`), 408 (the body stalled), 411, 413, 414, 415, 422 (an
image that cannot be decoded, is too large or shows no digit), 431, 500 (a bug, logged with its
traceback; the server keeps serving), 501 (an unknown method) or 505 (HTTP/0.9 or 2 as text).
HEAD answers a GET's headers. Every answer carries exactly one Content-Length.

`Limits` bound what one client can cost: the body's bytes, the decoded image's pixels, how long
a connection may stay silent, and how many images are decoded at once (memory).
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from digitsjax.apps.imaging import FIELD
from digitsjax.apps.predict import predict_bytes
from digitsjax.errors import ImageError, UserError

if TYPE_CHECKING:  # the CLI reads `Limits` for its defaults without loading JAX
    from digitsjax.run.trained import Network

MAX_BODY_BYTES = 1024 * 1024
"""Room for the page's canvas many times over, and for a JPEG photo of three quarters of this
size (base64 spends 4 bytes on 3). Larger bodies are refused before they are read."""
MAX_PIXELS = 4_000_000
"""Uploads decoding to more pixels are refused before decoding: a PNG within MAX_BODY_BYTES can
hold `imaging.MAX_PIXELS`, more memory and time to normalise than one drawn digit should cost
the server (`python bench/image_limits.py`; docs/performance.md)."""
TIMEOUT_SECONDS = 10.0
"""A connection silent for this long (between requests, or mid-request) is closed, so a
stalled client does not hold its thread forever."""
PAGE_PATHS = ("/", "/index.html")
PREDICT_PATH = "/api/predict"
INFO_PATH = "/api/info"
ALLOWED_METHODS = {**dict.fromkeys((*PAGE_PATHS, INFO_PATH), "GET, HEAD"), PREDICT_PATH: "POST"}
"""Each path's methods, for the Allow header of a 405; any other path is 404 to every method."""


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = MAX_BODY_BYTES
    max_pixels: int = MAX_PIXELS
    timeout_seconds: float = TIMEOUT_SECONDS
    decoders: int = os.cpu_count() or 1
    """Images decoded and classified at once; more wait their turn (this bounds memory). Pillow's
    part of a decode runs one at a time (`imaging.decode_image` says why)."""


class DigitServer(ThreadingHTTPServer):
    """An HTTP server holding one `Network` (its classifier compiled) for all requests."""

    daemon_threads = True
    request_queue_size = 128
    """socketserver's listen backlog of 5 makes the kernel reset connections when more clients
    than that connect at once (tests/test_serve_limits.py sends such a burst)."""

    def __init__(self, address: tuple[str, int], network: Network, limits: Limits):
        super().__init__(address, RequestHandler)
        self.network = network
        self.limits = limits
        self.decoding = threading.BoundedSemaphore(limits.decoders)
        self.page = resources.files("digitsjax.apps").joinpath("static/index.html").read_bytes()
        self.info = {"pipeline": network.pipeline.name, "step": network.step,
                     "hidden": list(network.pipeline.model.hidden)}


    def handle_error(self, request: Any, client_address: tuple[str, int]) -> None:
        """A client that hung up is one line in the log, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            print(f"{client_address[0]} - - the client closed the connection ({error})",
                  file=sys.stderr)
        else:
            super().handle_error(request, client_address)


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class RequestHandler(BaseHTTPRequestHandler):
    server: DigitServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK on a kept-alive connection (bench/serve_latency.py).
    disable_nagle_algorithm = True

    def setup(self) -> None:
        self.timeout = self.server.limits.timeout_seconds  # applied to the socket by setup()
        super().setup()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in PAGE_PATHS:
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == INFO_PATH:
            self._send_json(HTTPStatus.OK, self.server.info)
        else:
            self._refuse_method()

    do_HEAD = do_GET  # `_send` leaves the body out

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != PREDICT_PATH:
            self._refuse_method()
            return
        try:
            image = decode_request(self._read_json())
            with self.server.decoding:
                prediction = predict_bytes(self.server.network, image, "the posted image",
                                           self.server.limits.max_pixels)
        except RequestError as e:
            self._send_error(e)
        except ImageError as e:
            self._send_error(RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(e)))
        except ConnectionError:
            raise  # the client is gone: nothing to answer (`handle_error` logs one line)
        except Exception:  # a bug: answer, log it, and keep serving the other clients
            self.log_error("internal error answering %s %s:", self.command, self.path)
            traceback.print_exc()
            self._send_error(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR,
                                          "internal error; the server's log has the details"))
        else:
            self._send_json(HTTPStatus.OK, prediction.to_json())

    def _refuse_method(self) -> None:
        """405 naming the methods the path allows, or 404 for a path that is not served."""
        path = self.path.split("?", 1)[0]
        allow = ALLOWED_METHODS.get(path)
        if allow is None:
            self._send_error(RequestError(HTTPStatus.NOT_FOUND, f"no such page or API: {path}"))
        else:
            self._send_error(RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is "
                                          f"not supported for {path}; use {allow}"), allow=allow)

    do_PUT = do_DELETE = do_PATCH = _refuse_method

    def parse_request(self) -> bool:
        """HTTP/0.9, a request line without a version, has no status line or headers to answer
        with, so no Content-Length or Content-Type: refuse it (in HTTP/1.1)."""
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                            "HTTP/0.9 is not supported; send HTTP/1.0 or HTTP/1.1")
            return False
        return True

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, an unknown method,
        oversized headers) in the JSON form of every other error, not its HTML page; and with
        a status line even when the request line was not understood (the standard library
        then answers as to HTTP/0.9: a bare body)."""
        if self.request_version == "HTTP/0.9":
            self.request_version = self.protocol_version
        status = HTTPStatus(code)
        text = message or status.phrase
        self._send_error(RequestError(status, f"{text} ({explain})" if explain else text))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log refused requests only: a page being drawn on posts several times a second."""
        if isinstance(code, int) and code >= HTTPStatus.BAD_REQUEST:
            super().log_request(code, size)

    def _read_json(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header")
        if not length.isdigit():
            raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}")
        limit = self.server.limits.max_body_bytes
        if int(length) > limit:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the body is {int(length):,} bytes; the limit is {limit:,}")
        try:
            body = self.rfile.read(int(length))
        except TimeoutError:
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, "the body stopped arriving; send "
                               "it within the Content-Length") from None
        if len(body) < int(length):  # the client closed its side early
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is shorter than its "
                               "Content-Length")
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               "send Content-Type: application/json")
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested thousands deep
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is not valid JSON") from None

    def _send_json(self, status: HTTPStatus, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send_error(self, error: RequestError, allow: str | None = None) -> None:
        """Answer, then close: a body left unread must not be taken for the next request."""
        headers = {"Connection": "close"} | ({"Allow": allow} if allow else {})
        self._send(error.status, json.dumps({"error": str(error)}).encode(), "application/json",
                   headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":  # HEAD: a GET's headers, Content-Length included, no body
            self.wfile.write(body)


def decode_request(payload: Any) -> bytes:
    """`{"image": base64 or data: URL}` -> the image's bytes."""
    if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
        raise RequestError(HTTPStatus.BAD_REQUEST,
                           'send {"image": "<PNG or JPEG as base64 or a data: URL>"}')
    text = payload["image"]
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the data: URL must be base64-encoded "
                               "(data:image/png;base64,...)")
    try:  # line breaks, as `base64` writes them, are not part of the data
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(HTTPStatus.BAD_REQUEST, "image is not valid base64") from None


def make_server(network: Network, host: str = "127.0.0.1", port: int = 8000,
                limits: Limits = Limits()) -> DigitServer:
    """Bind the server and compile the network (one warm-up image), ready to serve."""
    network.classify(np.zeros((1, FIELD, FIELD), np.float32))
    try:
        return DigitServer((host, port), network, limits)
    except OSError as e:
        fix = {errno.EADDRINUSE: "pass another --port",
               errno.EACCES: "ports below 1024 need root; pass --port 8000"}.get(
                   e.errno, "check --host")
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); {fix}") from None


def serve_forever(server: DigitServer, echo: Callable[[str], None] = print) -> None:
    host, port = server.server_address[:2]
    echo(f"serving {server.info['pipeline']} (step {server.info['step']}) on "
         f"http://{host}:{port}/  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
