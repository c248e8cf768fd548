"""The example web service answers real HTTP requests on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from mmfuse.artifact import save
from mmfuse.model import build_fused_model
from mmfuse.predict import Predictor
from mmfuse.recipe import parse_recipe
from tests.model_folder_plugin import VECTOR_SAMPLES, vector_recipe

SERVER_FILE = Path(__file__).resolve().parents[1] / "examples" / "app" / "server.py"


def _server_module():
    spec = importlib.util.spec_from_file_location("mmfuse_example_server", SERVER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def model_folder(tmp_path):
    recipe = parse_recipe(vector_recipe())
    torch.manual_seed(6)
    model = build_fused_model(recipe).eval()
    return save(model, tmp_path / "run" / "model", recipe), Predictor(model, recipe)


@pytest.fixture
def base_url(model_folder):
    server = _server_module().make_server(str(model_folder[0].parent), port=0, read_timeout=1.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _call(url: str, body: dict | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_predict_over_http_matches_the_predictor(base_url, model_folder):
    predictor = model_folder[1]
    status, answer = _call(f"{base_url}/predict", {"samples": VECTOR_SAMPLES, "probabilities": True})
    assert status == 200
    expected = predictor.predict(VECTOR_SAMPLES)
    assert [row["label"] for row in answer["predictions"]] == [row["label"] for row in expected]
    assert [row["score"] for row in answer["predictions"]] == pytest.approx([row["score"] for row in expected], abs=1e-5)
    probabilities = predictor.predict_proba(VECTOR_SAMPLES)
    for got, want in zip(answer["probabilities"], probabilities, strict=True):
        assert got["label"] == pytest.approx(want["label"], abs=1e-5)


def test_health_and_embed(base_url, model_folder):
    assert _call(f"{base_url}/health") == (200, {"status": "ok", "tasks": ["label", "score"], "columns": ["feats"]})
    status, answer = _call(f"{base_url}/embed", {"samples": VECTOR_SAMPLES[:2]})
    assert status == 200
    assert torch.allclose(torch.tensor(answer["embeddings"]), model_folder[1].embed(VECTOR_SAMPLES[:2]), atol=1e-5)


def test_bad_requests_get_400_with_the_reason(base_url):
    status, answer = _call(f"{base_url}/predict", {"samples": [{"feats": [1, 2]}]})
    assert status == 400 and "sample 0, column 'feats': expected 4 numbers, got 2" in answer["error"]
    status, answer = _call(f"{base_url}/predict", raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]
    status, answer = _call(f"{base_url}/predict", {"samples": []})
    assert status == 400 and "non-empty list" in answer["error"]
    assert _call(f"{base_url}/nowhere", {"samples": []})[0] == 404


def test_command_line_server_starts_and_answers(model_folder):
    process = subprocess.Popen(
        [sys.executable, str(SERVER_FILE), str(model_folder[0]), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    watchdog = threading.Timer(90, process.kill)  # bounds the blocking readline below
    watchdog.start()
    try:
        line = process.stdout.readline()  # "serving ... on http://127.0.0.1:PORT (...)"
        assert "serving" in line, process.stderr.read() if process.poll() is not None else line
        url = line.split(" on ", 1)[1].split()[0]
        status, answer = _call(f"{url}/predict", {"samples": VECTOR_SAMPLES[:1]})
        assert status == 200 and answer["predictions"][0]["label"] in {"neg", "pos", "neutral"}
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(timeout=10)


# --------------------------------------------------------------------------- hostile requests


def _raw_exchange(base_url: str, head: bytes, body: bytes = b"", timeout: float = 20) -> tuple[int, dict]:
    """Send a hand-written request, read until the server closes; (status, JSON answer)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(head + body)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received:
                header, _, rest = received.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in header.split(b"\r\n") if line.lower().startswith(b"content-length")))
                if len(rest) >= length:
                    return int(header.split()[1]), json.loads(rest[:length])
    raise AssertionError(f"the server closed the connection without a full answer: {received[:200]!r}")


def test_content_length_that_is_not_a_number_is_a_400(base_url):
    status, answer = _raw_exchange(base_url, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    assert status == 400 and "Content-Length" in answer["error"]


def test_deeply_nested_json_is_a_400(base_url):
    status, answer = _call(f"{base_url}/predict", raw=b"[" * 200_000 + b"]" * 200_000)
    assert status == 400 and "nested too deeply" in answer["error"]


def test_oversized_body_gets_its_400_before_the_connection_closes(base_url):
    body = b"x" * (11 * 1024 * 1024)
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    status, answer = _raw_exchange(base_url, head, body)
    assert status == 400 and "1 to 10485760 bytes" in answer["error"]


def test_body_shorter_than_its_content_length_times_out(base_url):
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"samples\"")
        answer = b""
        while chunk := connection.recv(65536):  # the server gives up after its 1 s read timeout
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1.0 s" in answer


def test_forty_concurrent_clients_are_all_answered(base_url):
    assert _server_module().LISTEN_BACKLOG >= 32
    barrier = threading.Barrier(40)
    results: list[int] = []

    def client() -> None:
        barrier.wait(timeout=30)
        results.append(_call(f"{base_url}/predict", {"samples": VECTOR_SAMPLES[:1]})[0])

    threads = [threading.Thread(target=client) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [200] * 40
