"""`digitsjax serve`: a page to draw a digit on, and the JSON API behind it.

The standard library's threading HTTP server is enough for one page and one endpoint. The page
(`static/index.html`, no external resources, so it works offline) posts the canvas as a PNG to
`POST /api/predict`, which runs it through the same `Predictor` as `digitsjax predict`:

    request   {"image": "<PNG or JPEG, base64 or a data: URL>"}
    response  {"digit": d, "probabilities": [10 floats], "input": [28 rows of 28 floats]}

Errors answer `{"error": "..."}` with 400 (malformed request), 404, 405, 411, 413, 415 or 422
(an image that cannot be decoded or shows no digit).
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import numpy as np

from digitsjax.errors import ImageError, UserError
from digitsjax.imaging import FIELD
from digitsjax.predict import Predictor

MAX_BODY_BYTES = 8 * 1024 * 1024
"""A phone photo as base64 fits; anything larger is refused before it is read."""
PAGE_PATHS = ("/", "/index.html")
PREDICT_PATH = "/api/predict"
INFO_PATH = "/api/info"


class DigitServer(ThreadingHTTPServer):
    """An HTTP server holding one `Predictor` (its compiled network) for all requests."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], predictor: Predictor):
        super().__init__(address, RequestHandler)
        self.predictor = predictor
        self.page = resources.files("digitsjax").joinpath("static/index.html").read_bytes()
        trained = predictor.trained
        self.info = {"pipeline": trained.pipeline.name, "step": trained.step,
                     "hidden": list(trained.pipeline.model.hidden)}


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class RequestHandler(BaseHTTPRequestHandler):
    server: DigitServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK (~40 ms) on a kept-alive connection.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in PAGE_PATHS:
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == INFO_PATH:
            self._send_json(HTTPStatus.OK, self.server.info)
        elif path == PREDICT_PATH:
            self._send_error(RequestError(HTTPStatus.METHOD_NOT_ALLOWED,
                                          f"use POST for {PREDICT_PATH}"), allow="POST")
        else:
            self._send_error(RequestError(HTTPStatus.NOT_FOUND, f"no such page: {path}"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path != PREDICT_PATH:
                allowed = path in PAGE_PATHS or path == INFO_PATH
                raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED if allowed
                                   else HTTPStatus.NOT_FOUND, f"POST {path} is not an API")
            image = decode_request(self._read_json())
            prediction = self.server.predictor.predict_bytes(image, "the posted image")
        except RequestError as e:
            self._send_error(e)
        except ImageError as e:
            self._send_error(RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(e)))
        else:
            self._send_json(HTTPStatus.OK, prediction.to_json())

    def _refuse_method(self) -> None:
        self._send_error(RequestError(HTTPStatus.METHOD_NOT_ALLOWED,
                                      f"{self.command} is not supported"), allow="GET, POST")

    do_PUT = do_DELETE = do_PATCH = _refuse_method

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
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body must not be taken for a request
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the body is {int(length):,} bytes; the limit is "
                               f"{MAX_BODY_BYTES:,}")
        body = self.rfile.read(int(length))
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               "send Content-Type: application/json")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is not valid JSON") from None

    def _send_json(self, status: HTTPStatus, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send_error(self, error: RequestError, allow: str | None = None) -> None:
        headers = {"Allow": allow} if allow else {}
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


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000) -> DigitServer:
    """Bind the server and compile the network (one warm-up image), ready to serve."""
    predictor.classify(np.zeros((1, FIELD, FIELD), np.float32))
    try:
        return DigitServer((host, port), predictor)
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
