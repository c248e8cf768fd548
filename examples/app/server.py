"""A small prediction web service over an mmfuse model folder, using only the standard library.

Run it::

    python examples/app/server.py runs/my-run --port 8000

Endpoints (JSON in, JSON out)::

    GET  /health   -> {"status": "ok", "tasks": [...], "columns": [...]}
    POST /predict  {"samples": [{"text": "...", "image": "/srv/cat.png"}, ...], "probabilities": true}
                   -> {"predictions": [{task: prediction}, ...], "probabilities": [{task: {label: p}}, ...]}
    POST /embed    {"samples": [...]} -> {"embeddings": [[...], ...]}

Media values are paths on the server's disk (as in a manifest). One Predictor is shared by all
request threads: its forward pass is serialised by a lock, preprocessing runs in parallel.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import mmfuse
from mmfuse.contracts import SampleError
from mmfuse.predict import Predictor

MAX_BODY_BYTES = 10 * 1024 * 1024
#: seconds a request may take to send its body (a client that promises more bytes than it sends
#: would otherwise hold a thread forever)
READ_TIMEOUT_S = 30.0
#: pending connections the kernel queues before refusing new ones (the standard library's 5
#: resets clients as soon as a few dozen connect at once)
LISTEN_BACKLOG = 128
#: how much of a refused body is read and dropped so the client sees the answer (closing a socket
#: with unread data makes the kernel reset the connection, and the client loses the 400)
MAX_DRAIN_BYTES = 64 * 1024 * 1024


class BadRequest(ValueError):
    """The request cannot be answered as sent; the message is returned to the client."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, unread: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.unread = unread  # body bytes the client declared and we did not read


class PredictionServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a listen backlog sized for many concurrent clients."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


def make_handler(predictor: Predictor, read_timeout: float = READ_TIMEOUT_S) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one shared Predictor."""

    class PredictionHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = read_timeout  # applied to the connection's socket by StreamRequestHandler

        def do_GET(self) -> None:
            if self.path != "/health":
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}; try GET /health"})
                return
            columns = sorted(set(predictor.columns.values()))
            self._reply(HTTPStatus.OK, {"status": "ok", "tasks": predictor.tasks, "columns": columns})

        def do_POST(self) -> None:
            routes = {"/predict": self._predict, "/embed": self._embed}
            if self.path not in routes:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}; try /predict or /embed"})
                return
            try:
                body = self._read_json()
            except BadRequest as exc:
                self._refuse(exc)
                return
            try:
                self._reply(HTTPStatus.OK, routes[self.path](body))
            except (BadRequest, SampleError) as exc:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            except Exception as exc:  # a bug or a broken model: report it, keep serving
                self.log_error("prediction failed: %r", exc)
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

        def _predict(self, body: dict[str, Any]) -> dict[str, Any]:
            samples = _samples(body)
            answer: dict[str, Any] = {"predictions": predictor.predict(samples)}
            if body.get("probabilities"):
                answer["probabilities"] = [
                    {task: {str(label): p for label, p in probs.items()} for task, probs in row.items()}
                    for row in predictor.predict_proba(samples)
                ]
            return answer

        def _embed(self, body: dict[str, Any]) -> dict[str, Any]:
            return {"embeddings": predictor.embed(_samples(body)).tolist()}

        def _read_json(self) -> dict[str, Any]:
            declared = (self.headers.get("Content-Length") or "").strip()
            if not declared.isdigit():
                raise BadRequest(f"send a Content-Length header with the body size in bytes (got {declared!r:.40})")
            length = int(declared)
            if length <= 0 or length > MAX_BODY_BYTES:
                raise BadRequest(
                    f"send a JSON body of 1 to {MAX_BODY_BYTES} bytes (Content-Length: {length})", unread=length
                )
            try:
                raw = self.rfile.read(length)
            except (TimeoutError, socket.timeout) as exc:
                raise BadRequest(
                    f"the body did not arrive within {self.timeout} s (Content-Length: {length})",
                    status=HTTPStatus.REQUEST_TIMEOUT,
                ) from exc
            if len(raw) < length:
                raise BadRequest(f"the body ended after {len(raw)} of {length} bytes (Content-Length)")
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise BadRequest(f"the body is not valid JSON: {exc}") from exc
            except RecursionError as exc:
                raise BadRequest("the body is JSON nested too deeply") from exc
            if not isinstance(body, dict):
                raise BadRequest('the body must be a JSON object: {"samples": [...]}')
            return body

        def _refuse(self, error: BadRequest) -> None:
            """Answer a request whose body was not (fully) read, then close the connection: the
            rest of its body must not be parsed as the next request."""
            self.close_connection = True
            self._reply(error.status, {"error": str(error)}, close=True)
            if error.unread:
                self._drain(min(error.unread, MAX_DRAIN_BYTES))

        def _drain(self, limit: int) -> None:
            """Read and drop up to ``limit`` bytes of the unread body, for at most the read timeout."""
            deadline = time.monotonic() + self.timeout
            try:
                while limit > 0 and time.monotonic() < deadline:
                    chunk = self.rfile.read1(min(limit, 1 << 16))
                    if not chunk:
                        break
                    limit -= len(chunk)
            except OSError:
                pass  # the client went away or stalled: nothing more to do

        def _reply(self, status: HTTPStatus, payload: dict[str, Any], close: bool = False) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

    return PredictionHandler


def _samples(body: dict[str, Any]) -> list[dict[str, Any]]:
    samples = body.get("samples")
    if not isinstance(samples, list) or not samples:
        raise BadRequest('"samples" must be a non-empty list of objects keyed by column')
    return samples


def make_server(
    model_dir: str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", read_timeout: float = READ_TIMEOUT_S
) -> ThreadingHTTPServer:
    """A threading HTTP server serving the model folder (or run folder) at ``model_dir``;
    ``port=0`` picks a free port (see ``server.server_address``)."""
    predictor = mmfuse.load(model_dir, device=device)
    return PredictionServer((host, port), make_handler(predictor, read_timeout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an mmfuse model folder over HTTP.")
    parser.add_argument("model", help="model folder or run folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    server = make_server(args.model, args.host, args.port, args.device)
    host, port = server.server_address[:2]
    print(f"serving {args.model} on http://{host}:{port} (POST /predict, POST /embed, GET /health)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
