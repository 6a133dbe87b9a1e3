"""Latency of `POST /api/predict` for a canvas-sized PNG, with and without TCP_NODELAY.

    python bench/serve_latency.py WORKDIR [REQUESTS]

Both servers run in this process, side by side, on the loopback interface; the ratio is what
`RequestHandler.disable_nagle_algorithm` buys a page that posts while the user draws.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import sys
import threading
import time

import numpy as np
from PIL import Image

from digitsjax.apps import serve
from digitsjax.apps.imaging import load_digit
from digitsjax.apps.predict import predictions
from digitsjax.run.trained import Network, load_network


def canvas_png() -> bytes:
    """A 280x280 RGB PNG of a thick dark '7' on white, like the page sends."""
    image = Image.new("RGB", (280, 280), "white")
    pixels = np.asarray(image).copy()
    pixels[50:70, 70:210] = 0
    for y in range(70, 240):
        x = int(200 - (y - 70) * 0.5)
        pixels[y, x - 10:x + 10] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def latencies_ms(network: Network, body: bytes, nodelay: bool, count: int) -> np.ndarray:
    handler = type("Handler", (serve.RequestHandler,), {"disable_nagle_algorithm": nodelay})
    server = serve.make_server(network, "127.0.0.1", 0)
    server.RequestHandlerClass = handler
    threading.Thread(target=server.serve_forever, daemon=True).start()
    connection = http.client.HTTPConnection(*server.server_address[:2])
    times = []
    try:
        for _ in range(count + 10):  # the first ten warm up
            started = time.perf_counter()
            connection.request("POST", serve.PREDICT_PATH, body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200, response.read()
            response.read()
            times.append(time.perf_counter() - started)
    finally:
        connection.close()
        server.shutdown()
        server.server_close()
    return 1000 * np.array(times[10:])


def main() -> None:
    workdir, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100
    trained = load_network(workdir)
    png = canvas_png()
    body = json.dumps({"image": "data:image/png;base64," + base64.b64encode(png).decode()})
    started = time.perf_counter()
    digit = load_digit(png)
    for _ in range(count):
        load_digit(png)
    preprocessing = 1000 * (time.perf_counter() - started) / count
    predictions(trained, digit[None])
    started = time.perf_counter()
    for _ in range(count):
        predictions(trained, digit[None])
    network = 1000 * (time.perf_counter() - started) / count
    print(f"{len(body):,} B request; per image: preprocessing {preprocessing:.2f} ms, "
          f"network {network:.2f} ms")
    results = {nodelay: latencies_ms(trained, body.encode(), nodelay, count)
               for nodelay in (False, True)}
    for nodelay, ms in results.items():
        print(f"TCP_NODELAY {'on ' if nodelay else 'off'}: median {np.median(ms):6.2f} ms, "
              f"p90 {np.percentile(ms, 90):6.2f} ms over {count} keep-alive requests")
    ratio = np.median(results[False]) / np.median(results[True])
    print(f"median latency ratio (Nagle on / off): {ratio:.1f}x")


if __name__ == "__main__":
    main()
