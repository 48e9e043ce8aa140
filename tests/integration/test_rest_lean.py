"""The lean way in for REST inference calls answers exactly as Starlette's stack does.

Two real servers over the same models, one with the lean way in (the default: the protocol's
own entry, ``modelyard.server.http.entry``, where uvicorn is a tested version) and one without
(``app.LEAN`` off when it starts: uvicorn's ASGI cycle and Starlette's stack), get the same
requests from a real client: answers and errors must be the same bytes, status and headers (but
the date), TF Serving and KServe alike, pipelined, HTTP/1.0, ``Expect: 100-continue`` and
bodies over the limit too, and the statistics must count them the same way.
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
from modelyard.server.http.transport import http_protocol
from modelyard.testing.models import build_test_repository
from modelyard.testing.server import serving

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, ...]]:
    config, _ = build_test_repository(tmp_path_factory.mktemp("lean"), with_torch=False)
    with pytest.MonkeyPatch.context() as patch, serving(config, max_request_bytes=LIMIT) as lean:
        assert isinstance(lean.server.rest_app, RestApp)
        assert lean.server.rest_app.lean is not None
        # The lean server takes the hot calls at its protocol (uvicorn is a tested version).
        protocol = http_protocol(lean.server.rest_app.lean)
        assert not isinstance(protocol, str)
        assert protocol.__name__ == "HotHttpToolsProtocol"
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
    if _uvicorn_says_close():
        assert b"connection: close" in answer[0]


def _uvicorn_says_close() -> bool:
    """Whether uvicorn tells a client the connection will close when it closes it after an
    answer (0.53 and later; before, only a client that said ``Connection: close`` is told)."""
    import uvicorn

    major, minor = (int(part) for part in uvicorn.__version__.split(".")[:2])
    return (major, minor) >= (0, 53)


def _request(method: str, path: str, data: bytes = b"", *extra: str) -> bytes:
    """One HTTP/1.1 request as it goes on the wire (a body: with its Content-Length)."""
    head = [f"{method} {path} HTTP/1.1", "Host: t", *extra]
    if data or method == "POST":
        head.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def _urls(clients: tuple[httpx.Client, httpx.Client]) -> tuple[str, str]:
    lean, stack = (str(client.base_url).rstrip("/") for client in clients)
    return lean, stack


def test_pipelined_hot_and_other_requests_are_answered_in_order(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    """Inference calls and other routes pipelined on one connection: every answer in order,
    the same bytes as the stack's."""
    body = json.dumps({"instances": X}).encode()
    requests = [
        _request("POST", "/v1/models/linear:predict", body),
        _request("GET", "/v2/models/linear"),
        _request("POST", "/v2/models/linear/infer", json.dumps(KS_JSON).encode()),
        _request("POST", "/v2/models/linear/infer", json.dumps(KS_JSON).encode()),
        _request("GET", "/v2/health/ready"),
        _request("POST", "/v1/models/nothing:predict", body),
        _request("GET", "/v1/models/linear"),
        _request("POST", "/v1/models/linear:predict", body),
    ]
    lean, stack = _urls(clients)
    pipelined = b"".join(requests)
    answers = _raw_exchange(lean, pipelined, len(requests))
    assert answers == _raw_exchange(stack, pipelined, len(requests))
    assert [a.split(b"\r\n")[0].split(b" ")[1] for a in answers] == [
        b"200", b"200", b"200", b"200", b"200", b"404", b"200", b"200"
    ]  # fmt: skip
    assert b'"model_version_status"' in answers[6]  # the GET's own answer, in its place


def _read_until(sock: socket.socket, data: bytes, marker: bytes, count: int = 1) -> bytes:
    """``data`` and what the server sends next, until ``marker`` was seen ``count`` times
    (or the connection ends, or 30 s pass)."""
    deadline = time.monotonic() + 30
    while data.count(marker) < count and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _dateless(answer: bytes) -> bytes:
    return b"\r\n".join(x for x in answer.split(b"\r\n") if not x.startswith(b"date:"))


def test_expect_100_continue_is_answered_the_same(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    """A client that waits for ``100 Continue`` before its body gets it, then the answer."""
    body = json.dumps({"instances": X}).encode()
    head = _request("POST", "/v1/models/linear:predict", b"", "Expect: 100-continue")
    head = head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    seen = []
    for url in _urls(clients):
        with _connect(url) as sock:
            sock.sendall(head)
            interim = _read_until(sock, b"", b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(body)
            answer = _read_until(sock, b"", b'"predictions"')
            seen.append(_dateless(answer))
    assert seen[0] == seen[1]
    assert seen[0].startswith(b"HTTP/1.1 200 OK")


def test_a_chunked_body_over_the_limit_is_refused_and_the_connection_serves_on(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    """A body without a length that grows past ``--max-request-bytes``: 413 as on the stack,
    and the request sent after it on the same connection is answered."""
    chunk = b" " * 8192
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMIT // 8192 + 2))
    head = b"POST /v1/models/linear:predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked"
    refused = head + b"\r\n\r\n" + chunks + b"0\r\n\r\n"
    body = json.dumps({"instances": X}).encode()
    payload = refused + _request("POST", "/v1/models/linear:predict", body)
    lean, stack = (_raw_exchange(url, payload, 2) for url in _urls(clients))
    assert [a.split(b"\r\n")[0] for a in lean] == [
        b"HTTP/1.1 413 Request Entity Too Large",
        b"HTTP/1.1 200 OK",
    ]
    assert [a.split(b"\r\n")[0] for a in stack] == [a.split(b"\r\n")[0] for a in lean]
    assert b"is larger than the limit of 64.0 KiB (65536 bytes)" in lean[0]
    assert lean[1] == stack[1]


def test_http_1_0_and_connection_close_close_the_connection(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    """HTTP/1.0 (no keep-alive) and ``Connection: close``: the answer, then the server
    closes the connection; the same bytes as the stack's."""
    body = json.dumps({"instances": X}).encode()
    old = _request("POST", "/v2/models/linear/infer", json.dumps(KS_JSON).encode())
    old = old.replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    closing = _request("POST", "/v1/models/linear:predict", body, "Connection: close")
    for payload, said in ((old, False), (closing, True)):
        seen = []
        for url in _urls(clients):
            with _connect(url) as sock:
                sock.sendall(payload)
                seen.append(_dateless(_read_until(sock, b"", b"\0")))  # to the end
        assert seen[0] == seen[1]
        assert seen[0].startswith(b"HTTP/1.1 200 OK")
        if said or _uvicorn_says_close():
            assert b"connection: close" in seen[0]
        assert seen[0].endswith(b"}")  # the whole answer, then the end of the connection


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    """After an inference call's answer the connection stays open for the next request, and
    the server closes it once it has been idle for uvicorn's keep-alive timeout (5 s)."""
    body = json.dumps({"instances": X}).encode()
    lean, _ = _urls(clients)
    with _connect(lean) as sock:
        sock.sendall(_request("POST", "/v1/models/linear:predict", body))
        answered = _read_until(sock, b"", b'"predictions"')
        assert answered.startswith(b"HTTP/1.1 200 OK")
        time.sleep(1.0)  # still open after a second: a second call is answered on it
        sock.sendall(_request("POST", "/v1/models/linear:predict", body))
        assert _read_until(sock, b"", b'"predictions"').startswith(b"HTTP/1.1 200 OK")
        idle = time.monotonic()
        rest = _read_until(sock, b"", b"\0")  # until the server closes it (30 s at most)
        waited = time.monotonic() - idle
    assert rest == b""
    assert 4.0 <= waited < 15.0, waited
