"""`digitsjax serve` facing bad clients, over real sockets to a real server process: every
malformed, oversized, misdirected or stalled request ends in a clear status or a closed
connection, never a crash, a hang or a file from outside the page; and under load (2,000
predictions from 16 concurrent clients) no request fails or gets another request's answer."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import struct
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from digitsjax.apps import serve
from digitsjax.apps.predict import predict_bytes
from digitsjax.run.trained import Network, load_network

from .conftest import request, serving
from .digit_pictures import dark_ink_gray_png

TIMEOUT = 2.0  # the server's --timeout: short, so that the stall tests are quick
LIMIT = serve.MAX_BODY_BYTES
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def network(trained_workdir) -> Network:
    return load_network(trained_workdir)


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve") / "server.log"


@pytest.fixture(scope="module")
def server(trained_workdir, server_log) -> tuple[str, int]:
    """(host, port) of `digitsjax serve` with the default limits and a 2 s timeout."""
    with serving(trained_workdir, "--timeout", str(TIMEOUT), log=server_log) as url:
        address = urlsplit(url)
        yield address.hostname, address.port




def exchange(server, data: bytes, shut_write: bool = False) -> bytes:
    """Send raw bytes; everything the server answers until it closes the connection."""
    with socket.create_connection(server, timeout=30) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def a_digit_png(side: int = 280) -> bytes:
    """A canvas like the page's: a thick dark stroke on white."""
    pixels = np.full((side, side), 255, np.uint8)
    pixels[side // 5:4 * side // 5, side // 2 - side // 20:side // 2 + side // 20] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def predict_body(png: bytes, **extra) -> bytes:
    return json.dumps({"image": base64.b64encode(png).decode(), **extra}).encode()


@pytest.mark.parametrize("body, message", [
    (b"{nope", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),  # nested deeper than the parser recurses
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[1, 2]", '{"image": "<PNG or JPEG'),
    (b'{"image": null}', '{"image": "<PNG or JPEG'),
    (b'{"image": "data:image/png,iVBOR"}', "must be base64-encoded"),
    (b'{"image": "@@@@"}', "not valid base64"),
], ids=["broken", "deeply nested", "not UTF-8", "an array", "null image", "data URL",
        "not base64"])
def test_a_malformed_body_is_400_with_the_reason(server, body, message):
    status, _, answer = request(server, "POST", "/api/predict", body, JSON)
    assert status == 400
    assert message in json.loads(answer)["error"]


@pytest.mark.parametrize("headers, status, message", [
    ("", 411, "send a Content-Length header"),
    ("Content-Length: many\r\n", 400, "bad Content-Length 'many'"),
    ("Content-Length: -5\r\n", 400, "bad Content-Length '-5'"),
    ("Content-Length: 100\r\n", 400, "shorter than its Content-Length"),  # 9 bytes come
])
def test_a_wrong_content_length_is_refused(server, headers, status, message):
    answer = exchange(server, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/json\r\nConnection: close\r\n" + headers.encode() +
                      b"\r\n{\"image\"", shut_write=True)
    assert status_of(answer) == status and message.encode() in answer


@pytest.mark.parametrize("content_type", [None, "text/plain", "multipart/form-data; boundary=x",
                                          "application/x-www-form-urlencoded", "image/png"])
def test_a_body_that_is_not_json_is_415(server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    status, _, answer = request(server, "POST", "/api/predict", predict_body(a_digit_png()),
                                headers)
    assert status == 415 and "application/json" in json.loads(answer)["error"]


def test_a_body_over_the_limit_is_413_before_it_is_sent(server):
    """Only the headers go out: the answer comes without the server reading a byte of body."""
    answer = exchange(server, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/json\r\nContent-Length: " + str(LIMIT + 1).encode() +
                      b"\r\n\r\n")
    assert status_of(answer) == 413
    assert f"the limit is {LIMIT:,}".encode() in answer


def test_a_body_of_exactly_the_limit_is_served(server):
    body = predict_body(a_digit_png(), padding="")
    body = predict_body(a_digit_png(), padding="x" * (LIMIT - len(body)))
    assert len(body) == LIMIT
    status, _, answer = request(server, "POST", "/api/predict", body, JSON)
    assert status == 200 and len(json.loads(answer)["probabilities"]) == 10


def test_an_image_over_the_pixel_limit_is_422_before_decoding(server):
    wide = Image.new("L", (2001, 2000), 255)  # 4,002,000 pixels, a few kB as PNG
    buffer = io.BytesIO()
    wide.save(buffer, "PNG")
    status, _, answer = request(server, "POST", "/api/predict", predict_body(buffer.getvalue()),
                                JSON)
    assert status == 422
    assert "2001x2000 pixels, more than 4,000,000" in json.loads(answer)["error"]


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/api/predict", "POST"), ("HEAD", "/api/predict", "POST"),
    ("PUT", "/api/predict", "POST"), ("DELETE", "/api/predict", "POST"),
    ("PATCH", "/", "GET, HEAD"), ("POST", "/", "GET, HEAD"),
    ("POST", "/index.html", "GET, HEAD"), ("POST", "/api/info", "GET, HEAD"),
])
def test_a_wrong_method_is_405_with_the_methods_the_path_allows(server, method, path, allow):
    status, headers, answer = request(server, method, path, b"{}", JSON)
    assert status == 405 and headers["Allow"] == allow
    if method != "HEAD":
        assert json.loads(answer)["error"]


@pytest.mark.parametrize("method, path", [
    ("GET", "/nowhere"), ("GET", "/api"), ("GET", "/api/predict/more"),
    ("GET", "/static/index.html"), ("POST", "/api/nowhere"), ("GET", "/index.htm"),
])
def test_an_unknown_path_is_404(server, method, path):
    status, _, answer = request(server, method, path, b"{}", JSON)
    assert status == 404 and json.loads(answer)["error"]


def raw(request_line: str, *headers: str, body: bytes = b"") -> bytes:
    """A request as bytes, closing the connection after the answer."""
    lines = [request_line, "Host: x", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


HEADERS_ONLY = {"HEAD"}
RAW_REQUESTS = {
    "the page": (raw("GET / HTTP/1.1"), 200),
    "the page's headers": (raw("HEAD / HTTP/1.1"), 200),
    "the model's info": (raw("GET /api/info HTTP/1.1"), 200),
    "a prediction": (raw("POST /api/predict HTTP/1.1", "Content-Type: application/json",
                         f"Content-Length: {len(predict_body(a_digit_png()))}",
                         body=predict_body(a_digit_png())), 200),
    "HTTP/1.0": (b"GET /api/info HTTP/1.0\r\n\r\n", 200),
    "an unknown path": (raw("GET /nowhere HTTP/1.1"), 404),
    "an unknown path's headers": (raw("HEAD /nowhere HTTP/1.1"), 404),
    "the API's headers": (raw("HEAD /api/predict HTTP/1.1"), 405),
    "a method the path does not allow": (raw("PUT / HTTP/1.1"), 405),
    "OPTIONS": (raw("OPTIONS / HTTP/1.1"), 501),
    "an unknown method": (raw("BREW /pot HTTP/1.1"), 501),
    "a request line of one word": (b"GARBAGE\r\n\r\n", 400),
    "a request line of four words": (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
    "a version that is not HTTP": (b"GET / FTP/1.1\r\n\r\n", 400),
    "HTTP/2 as text": (b"GET / HTTP/2.0\r\n\r\n", 505),
    "HTTP/0.9": (b"GET /\r\n\r\n", 505),
    "a URL over 64 KiB": (b"GET /" + b"a" * (65537 - 5), 414),  # exactly what the server reads
    "101 headers": (raw("GET / HTTP/1.1", *(f"X-{i}: y" for i in range(101))), 431),
    "no Content-Length": (raw("POST /api/predict HTTP/1.1", "Content-Type: application/json"),
                          411),
    "a body over the limit": (raw("POST /api/predict HTTP/1.1", "Content-Type: application/json",
                                  f"Content-Length: {LIMIT + 1}"), 413),
    "a body that is not JSON": (raw("POST /api/predict HTTP/1.1", "Content-Type: text/plain",
                                    "Content-Length: 2", body=b"{}"), 415),
    "broken JSON": (raw("POST /api/predict HTTP/1.1", "Content-Type: application/json",
                        "Content-Length: 5", body=b"{nope"), 400),
}


def parse_answer(answer: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers in the order sent, body) of one HTTP/1.x answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 "), answer[:300]
    headers = [(name.strip().lower(), value.strip())
               for name, _, value in (line.partition(":") for line in lines)]
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("name", RAW_REQUESTS)
def test_every_answer_has_one_content_length_and_every_error_a_json_reason(server, name):
    """What clients and proxies rely on, whichever part of the server answers (the standard
    library's parser answers malformed requests, unknown methods and oversized headers)."""
    sent, status = RAW_REQUESTS[name]
    got, headers, body = parse_answer(exchange(server, sent))
    assert got == status
    lengths = [value for header, value in headers if header == "content-length"]
    assert len(lengths) == 1, headers
    headers_only = sent.split(b" ", 1)[0].decode() in HEADERS_ONLY
    assert len(body) == (0 if headers_only else int(lengths[0]))
    if status >= 400:
        assert [value for header, value in headers if header == "content-type"] == [
            "application/json"]
        assert headers_only or json.loads(body)["error"]


TRAVERSALS = [
    "/../../../../etc/passwd", "/static/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
    "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/..%2f..%2f..%2fetc%2fpasswd",
    "/%252e%252e/%252e%252e/etc/passwd", "//etc/passwd", "/index.html/../../../etc/passwd",
    "/./index.html/../../../../etc/passwd", "/..\\..\\..\\etc\\passwd",
    "/static/..%5c..%5c..%5cetc%5cpasswd", "/api/../../../etc/passwd", "/%00/etc/passwd",
    "/index.html%00.png", "/../serve.py", "/static/../serve.py", "/../../pyproject.toml",
    "http://127.0.0.1/../../etc/passwd", "/static/%2e%2e/__init__.py",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_reaches_a_file_outside_the_page(server, path):
    """The page is one packaged file, served for / and /index.html only: nothing maps a URL
    to the filesystem, so no spelling of `..` can lead anywhere."""
    answer = exchange(server, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                      .encode())
    assert status_of(answer) == 404
    assert b"root:" not in answer and b"import " not in answer and b"[project]" not in answer


def test_a_query_string_does_not_change_what_is_served(server):
    status, headers, page = request(server, "GET", "/?file=../../etc/passwd")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"root:" not in page and b'<canvas id="pad"' in page


def closed_after(sock: socket.socket) -> tuple[bytes, float]:
    """What the server sends before it closes `sock`, and how long that took."""
    started = time.monotonic()
    answer = read_until_closed(sock)
    return answer, time.monotonic() - started


@pytest.mark.parametrize("sent, status", [
    (b"", None),  # connects and says nothing
    (b"POST /api/predict HTTP/1.1\r\nHost: x\r\n", None),  # stalls in the headers
    (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     b"Content-Length: 1000\r\n\r\n{\"image\": \"", 408),  # stalls in the body
], ids=["silent", "headers", "body"])
def test_a_stalled_client_is_disconnected_after_the_timeout(server, sent, status):
    with socket.create_connection(server, timeout=30) as stalled:
        stalled.sendall(sent)
        # Meanwhile, other clients are served at once: the stalled one holds only its thread.
        started = time.monotonic()
        assert request(server, "GET", "/api/info")[0] == 200
        assert time.monotonic() - started < TIMEOUT / 2
        answer, seconds = closed_after(stalled)
    assert TIMEOUT - 0.5 < seconds < TIMEOUT + 5
    if status is None:
        assert answer == b""  # nothing to answer: no request arrived whole
    else:
        assert status_of(answer) == status and b"stopped arriving" in answer


def test_an_idle_kept_alive_connection_is_closed_after_the_timeout(server):
    connection = http.client.HTTPConnection(*server, timeout=30)
    connection.request("GET", "/api/info")
    assert connection.getresponse().read()
    answer, seconds = closed_after(connection.sock)
    assert answer == b"" and TIMEOUT - 0.5 < seconds < TIMEOUT + 5
    connection.close()


def test_a_failing_prediction_is_500_and_the_server_keeps_serving(network, monkeypatch):
    """A bug (here: the network raising) answers 500 and is logged; the next request works."""
    in_process = serve.make_server(network, "127.0.0.1", 0)
    thread = threading.Thread(target=in_process.serve_forever, daemon=True)
    thread.start()
    address = in_process.server_address[:2]
    try:
        with monkeypatch.context() as patch:
            patch.setattr(Network, "probabilities", lambda self, images: 1 / 0)
            status, _, answer = request(address, "POST", "/api/predict",
                                        predict_body(a_digit_png()), JSON)
        assert status == 500 and "server's log" in json.loads(answer)["error"]
        status, _, answer = request(address, "POST", "/api/predict",
                                    predict_body(a_digit_png()), JSON)
        assert status == 200 and json.loads(answer)["digit"] in range(10)
    finally:
        in_process.shutdown()
        in_process.server_close()


def test_a_burst_of_connections_is_accepted_not_reset(server):
    """64 clients connecting at the same moment each get an answer (the stdlib's backlog of
    5 made the kernel reset some of them)."""
    burst = 64
    start, statuses = threading.Barrier(burst), []

    def client() -> None:
        start.wait()
        try:
            statuses.append(request(server, "GET", "/api/info")[0])
        except OSError as e:
            statuses.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(burst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * burst


def test_a_client_that_hangs_up_is_one_log_line(server, server_log):
    with socket.create_connection(server, timeout=30) as rude:
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n{")
    # SO_LINGER 0: closing sends a reset, as a crashed client or a dropped network does.
    deadline = time.monotonic() + 10
    while "the client closed the connection" not in server_log.read_text():
        assert time.monotonic() < deadline, server_log.read_text()
        time.sleep(0.05)
    assert "Traceback" not in server_log.read_text()


CLIENTS, PREDICTIONS = 16, 2000


def test_2000_predictions_from_16_concurrent_clients_without_an_error(server, network, mnist):
    """Each client keeps one connection alive and posts real test digits as PNGs; every answer
    must be 200 and the digit the network gives that picture in this process."""
    pictures = [dark_ink_gray_png(d) for d in mnist.test_images[:64].reshape(-1, 28, 28)]
    bodies = [predict_body(p) for p in pictures]
    expected = [predict_bytes(network, p).digit for p in pictures]
    latencies: list[float] = []
    failures: list[str] = []
    start = threading.Barrier(CLIENTS + 1)

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(*server, timeout=60)
        start.wait()
        for i in range(number, PREDICTIONS, CLIENTS):
            began = time.perf_counter()
            try:
                connection.request("POST", "/api/predict", bodies[i % len(bodies)], JSON)
                response = connection.getresponse()
                answer = response.read()
                latencies.append(time.perf_counter() - began)
                if response.status != 200:
                    failures.append(f"{response.status} {answer[:200]!r}")
                elif json.loads(answer)["digit"] != expected[i % len(bodies)]:
                    failures.append(f"request {i}: another picture's answer")
            except (OSError, http.client.HTTPException) as e:
                failures.append(f"request {i}: {e!r}")
                connection.close()  # reconnects on the next request
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began

    assert failures == []
    assert len(latencies) == PREDICTIONS
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    print(f"\n{PREDICTIONS} predictions, {CLIENTS} concurrent clients, 0 errors: "
          f"{PREDICTIONS / seconds:.0f} predictions/s, latency p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms, {seconds:.1f} s")
