"""The lean way in for REST inference calls answers exactly as Starlette's stack does.

Two real servers over the same models, one with the lean way in (the default) and one without
(``app.LEAN`` off when it starts), get the same requests from a real client: answers and errors
must be the same bytes, status and headers (but the date), TF Serving and KServe alike, and the
statistics must count them the same way.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.server.http import app as app_module
from modelyard.server.http.app import RestApp
from modelyard.testing.models import build_test_repository
from modelyard.testing.server import serving

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, ...]]:
    config, _ = build_test_repository(tmp_path_factory.mktemp("lean"), with_torch=False)
    with pytest.MonkeyPatch.context() as patch, serving(config, max_request_bytes=LIMIT) as lean:
        assert isinstance(lean.server.rest_app, RestApp)
        assert lean.server.rest_app.lean is not None
        patch.setattr(app_module, "LEAN", False)
        with serving(config, max_request_bytes=LIMIT) as stack:
            assert isinstance(stack.server.rest_app, RestApp)
            assert stack.server.rest_app.lean is None
            with (
                httpx.Client(base_url=lean.rest_url, timeout=30) as a,
                httpx.Client(base_url=stack.rest_url, timeout=30) as b,
            ):
                yield a, b


def _binary_body(x: np.ndarray, binary_out: bool) -> tuple[bytes, dict[str, str]]:
    raw = x.astype(np.float32).tobytes()
    header: dict[str, Any] = {
        "inputs": [
            {
                "name": "x",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
    }
    if binary_out:
        header["outputs"] = [{"name": "y", "parameters": {"binary_data": True}}]
    head = json.dumps(header).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + raw, headers


X = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.5, 2.5, 1e-3]]
FLAT = [v for row in X for v in row]
KS_JSON = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": FLAT}]}
BINARY, BINARY_HEADERS = _binary_body(np.array(X), True)
BINARY_JSON_OUT, BINARY_JSON_OUT_HEADERS = _binary_body(np.array(X), False)
GZIPPED = gzip.compress(json.dumps(KS_JSON).encode())

# (path, body (JSON value, or bytes as they are), extra headers)
CASES: list[tuple[str, Any, dict[str, str]]] = [
    # TF Serving: answers
    ("/v1/models/linear:predict", {"instances": X}, {}),
    ("/v1/models/linear:predict", {"inputs": X}, {}),
    ("/v1/models/linear/versions/1:predict", {"instances": X}, {}),
    ("/v1/models/linear/labels/canary:predict", {"instances": X}, {}),
    ("/v1/models/linear:predict", {"instances": X, "signature_name": "serving_default"}, {}),
    ("/v1/models/sum_product:predict", {"instances": [{"a": [1.0] * 3, "b": [2.0] * 3}]}, {}),
    ("/v1/models/sum_product:predict", {"inputs": {"a": [[1.0] * 3], "b": [[2.0] * 3]}}, {}),
    ("/v1/models/int64_affine:predict", {"instances": [[1, 2, 3]]}, {}),
    ("/v1/models/linear:predict", {"instances": X}, {"Connection": "close"}),
    # TF Serving: errors
    ("/v1/models/nothing:predict", {"instances": X}, {}),
    ("/v1/models/linear/versions/9:predict", {"instances": X}, {}),
    ("/v1/models/linear/versions/x:predict", {"instances": X}, {}),
    ("/v1/models/linear/labels/nope:predict", {"instances": X}, {}),
    ("/v1/models/linear/other/1:predict", {"instances": X}, {}),
    ("/v1/models/:predict", {"instances": X}, {}),
    ("/v1/models/linear:classify:predict", {"instances": X}, {}),
    ("/v1/models/linear:predict", b"", {}),
    ("/v1/models/linear:predict", b"{not json", {}),
    ("/v1/models/linear:predict", [1, 2], {}),
    ("/v1/models/linear:predict", {"instances": X, "inputs": X}, {}),
    ("/v1/models/linear:predict", {"instances": [[1.0, "a", 3.0, 4.0]]}, {}),
    ("/v1/models/linear:predict", {"instances": [[1e39, 1.0, 3.0, 4.0]]}, {}),
    ("/v1/models/linear:predict", {"instances": [[1.0, 2.0]]}, {}),
    ("/v1/models/linear:predict", {"instances": X, "signature_name": "nope"}, {}),
    ("/v1/models/int64_affine:predict", {"instances": [[1.5, 2, 3]]}, {}),
    ("/v1/models/linear:predict", b" " * (LIMIT + 1), {}),
    # KServe v2: answers
    ("/v2/models/linear/infer", KS_JSON, {}),
    ("/v2/models/linear/versions/2/infer", KS_JSON, {}),
    ("/v2/models/linear/infer", {**KS_JSON, "id": "r1", "outputs": [{"name": "y"}]}, {}),
    ("/v2/models/linear/infer", BINARY, BINARY_HEADERS),
    ("/v2/models/linear/infer", BINARY_JSON_OUT, BINARY_JSON_OUT_HEADERS),
    ("/v2/models/linear/infer", GZIPPED, {"Content-Encoding": "gzip"}),
    # KServe v2: errors
    ("/v2/models/nothing/infer", KS_JSON, {}),
    ("/v2/models/linear/versions/x/infer", KS_JSON, {}),
    ("/v2/models/linear/versions/9/infer", KS_JSON, {}),
    ("/v2/models/linear/versions/infer", KS_JSON, {}),
    ("/v2/models/linear/infer", b"{not json", {}),
    ("/v2/models/linear/infer", {"inputs": []}, {}),
    ("/v2/models/linear/infer", {"inputs": [{**KS_JSON["inputs"][0], "datatype": "FP99"}]}, {}),
    ("/v2/models/linear/infer", {"inputs": [{**KS_JSON["inputs"][0], "shape": [3, 4]}]}, {}),
    ("/v2/models/linear/infer", BINARY, {**BINARY_HEADERS, "Inference-Header-Content-Length": "x"}),
    ("/v2/models/linear/infer", b"{}", {"Content-Encoding": "br"}),
    ("/v2/models/linear/infer", b" " * (LIMIT + 1), {}),
]


def _send(client: httpx.Client, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers=headers)


def _seen(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k != "date"]
    return response.status_code, headers, response.content


@pytest.mark.parametrize("case", range(len(CASES)))
def test_lean_and_stack_answer_the_same_bytes(
    clients: tuple[httpx.Client, httpx.Client], case: int
) -> None:
    path, body, headers = CASES[case]
    lean, stack = (_seen(_send(c, path, body, headers)) for c in clients)
    assert lean == stack
    status = lean[0]
    if status != 200:  # every refusal in the protocols' error shape
        assert set(json.loads(lean[2])) == {"error"}, lean


def test_both_count_the_same_calls(clients: tuple[httpx.Client, httpx.Client]) -> None:
    """Statistics: the same successes, failures and refusals (per protocol) on both."""
    for client in clients:
        for path, body, headers in CASES:
            _send(client, path, body, headers)
    counts = [client.get("/metrics").text for client in clients]
    lean, stack = ({line for line in text.splitlines() if _counting(line)} for text in counts)
    assert lean == stack
    assert any("kserve_rest" in line for line in lean)
    assert any("tfserving_rest" in line for line in lean)


def _counting(line: str) -> bool:
    """A sample of the inference request and refusal counts (per model, outcome, protocol)."""
    return line.startswith(("modelyard_inference_requests_total", "modelyard_inference_rejected"))


def _raw_exchange(base_url: str, payload: bytes, answers: int) -> list[bytes]:
    """``payload`` (requests back to back) sent in one write on a new connection; the
    ``answers`` answers read back, each with its Date header taken out."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(payload)
        data = b""
        found: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(found) < answers and time.monotonic() < deadline:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                head = data[:head_end].decode("latin-1")
                length = int(head.lower().split("content-length: ")[1].split("\r\n")[0])
                if len(data) >= head_end + 4 + length:
                    answer, data = data[: head_end + 4 + length], data[head_end + 4 + length :]
                    lines = answer.split(b"\r\n")
                    found.append(b"\r\n".join(x for x in lines if not x.startswith(b"date:")))
                    continue
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return found


def test_pipelined_and_http_1_0_requests_answer_the_same(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    """Requests pipelined on one connection get their answers in order (the answer is written
    on uvicorn's cycle, which then starts the next request); HTTP/1.0 is answered and closed."""
    body = json.dumps({"instances": X}).encode()
    bad = b'{"instances": [[1.0, 2.0]]}'

    def request(path: str, data: bytes, version: str = "1.1") -> bytes:
        head = f"POST {path} HTTP/{version}\r\nHost: t\r\nContent-Length: {len(data)}\r\n\r\n"
        return head.encode() + data

    pipelined = b"".join(
        [
            request("/v1/models/linear:predict", body),
            request("/v1/models/linear:predict", bad),
            request("/v2/models/linear/infer", json.dumps(KS_JSON).encode()),
        ]
    )
    lean, stack = (str(client.base_url).rstrip("/") for client in clients)
    answers = _raw_exchange(lean, pipelined, 3)
    assert len(answers) == 3
    assert answers == _raw_exchange(stack, pipelined, 3)
    assert [a.split(b"\r\n")[0] for a in answers] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 200 OK",
    ]
    old = request("/v1/models/linear:predict", body, "1.0")
    answer = _raw_exchange(lean, old, 1)
    assert answer == _raw_exchange(stack, old, 1)
    assert b"connection: close" in answer[0]
