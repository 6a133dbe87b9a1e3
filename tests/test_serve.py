"""`digitsjax serve`: the page and the JSON API, over real HTTP on the loopback interface."""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest

from digitsjax.apps import imaging, serve
from digitsjax.apps.imaging import load_digit
from digitsjax.apps.predict import predict_bytes
from digitsjax.errors import UserError
from digitsjax.run.trained import Network, load_network

from .conftest import request
from .digit_pictures import blue_ink_on_cream_jpeg, dark_ink_gray_png


@pytest.fixture(scope="module")
def network(trained_workdir) -> Network:
    return load_network(trained_workdir)


@pytest.fixture(scope="module")
def server(network):
    server = serve.make_server(network, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()




def post_json(server, payload) -> tuple[int, dict]:
    status, _, body = request(server.server_address[:2], "POST", "/api/predict",
                              json.dumps(payload).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body)


def test_it_listens_on_this_machine_only_by_default():
    from digitsjax.cli import build_parser

    args = build_parser().parse_args(["serve", "checkpoints/mnist_mlp"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def test_the_page_is_self_contained(server):
    status, headers, body = request(server.server_address[:2], "GET", "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<canvas id="pad"' in page and "api/predict" in page
    assert "http://" not in page and "https://" not in page  # no CDN: works offline


def test_predict_answers_digit_probabilities_and_the_networks_input(server, mnist, network):
    digits, labels = mnist.test_images[:8].reshape(-1, 28, 28), mnist.test_labels[:8]
    for i, (digit, label) in enumerate(zip(digits, labels, strict=True)):
        picture = (dark_ink_gray_png if i % 2 else blue_ink_on_cream_jpeg)(digit)
        kind = "png" if i % 2 else "jpeg"
        encoded = base64.b64encode(picture).decode()
        # The page sends data: URLs; scripts may send bare base64.
        image = f"data:image/{kind};base64,{encoded}" if i < 4 else encoded
        status, answer = post_json(server, {"image": image})
        assert status == 200, answer
        assert set(answer) == {"digit", "probabilities", "input"}
        assert answer["digit"] == label
        assert len(answer["probabilities"]) == 10
        assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        seen = np.array(answer["input"])
        assert seen.shape == (28, 28)
        assert np.allclose(seen, load_digit(picture), atol=1e-4)  # predict's preprocessing
        assert answer["probabilities"] == pytest.approx(
            predict_bytes(network, picture).probabilities, abs=1e-6)


def test_info_names_the_model(server, network):
    status, _, body = request(server.server_address[:2], "GET", "/api/info")
    assert status == 200
    assert json.loads(body) == {"pipeline": network.pipeline.name,
                                "step": network.step,
                                "hidden": list(network.pipeline.model.hidden)}


@pytest.mark.parametrize("method, path, body, headers, status, message", [
    ("POST", "/api/predict", b'{"image": 1}', {"Content-Type": "application/json"}, 400,
     '{"image": "<PNG or JPEG'),
    ("POST", "/api/predict", b"{nope", {"Content-Type": "application/json"}, 400,
     "not valid JSON"),
    ("POST", "/api/predict", b'{"image": "%%%"}', {"Content-Type": "application/json"}, 400,
     "not valid base64"),
    ("POST", "/api/predict", b'{"image": "aGVsbG8="}', {"Content-Type": "application/json"},
     422, "not a PNG or JPEG"),
    ("POST", "/api/predict", b'{"image": ""}', {"Content-Type": "text/plain"}, 415,
     "application/json"),
    ("GET", "/api/predict", None, {}, 405, "use POST"),
    ("OPTIONS", "/", None, {}, 501, "OPTIONS"),
    ("DELETE", "/", None, {}, 405, "DELETE is not supported"),
    ("GET", "/nowhere", None, {}, 404, "no such page"),
    ("POST", "/api/nowhere", b"{}", {"Content-Type": "application/json"}, 404,
     "no such page or API"),
])
def test_bad_requests_get_a_status_and_a_json_reason(server, method, path, body, headers,
                                                     status, message):
    got, _, answer = request(server.server_address[:2], method, path, body, headers)
    assert got == status
    assert message in json.loads(answer)["error"]


def test_a_blank_drawing_is_unprocessable_not_a_crash(server):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (280, 280), "white").save(buffer, "PNG")
    status, answer = post_json(server, {"image": base64.b64encode(buffer.getvalue()).decode()})
    assert status == 422 and "blank" in answer["error"]


def test_a_taken_port_is_a_one_line_user_error(server, network):
    with pytest.raises(UserError, match="pass another --port"):
        serve.make_server(network, "127.0.0.1", server.server_address[1])


@pytest.mark.parametrize("path", ["/", "/index.html", "/api/info", "/api/info?x=1"])
def test_head_answers_the_headers_of_get_without_a_body(server, path):
    address = server.server_address[:2]
    get_status, get_headers, get_body = request(address, "GET", path)
    head_status, head_headers, head_body = request(address, "HEAD", path)
    assert head_status == get_status == 200 and get_body and head_body == b""
    get_headers.pop("Date"), head_headers.pop("Date")  # the only header that may differ
    assert head_headers == get_headers
    assert int(head_headers["Content-Length"]) == len(get_body)


def test_an_image_over_the_byte_limit_is_422_naming_the_limit(server, monkeypatch, mnist):
    """An upload is held to the limit on image files that `predict` reads."""
    monkeypatch.setattr(imaging, "MAX_IMAGE_BYTES", 1000)
    picture = blue_ink_on_cream_jpeg(mnist.test_images[0].reshape(28, 28))
    assert len(picture) > 1000
    status, answer = post_json(server, {"image": base64.b64encode(picture).decode()})
    assert status == 422
    assert answer["error"].startswith("the posted image is larger than 1,000 bytes, the limit")
