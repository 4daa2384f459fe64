"""Helpers shared by the Serve tests: free ports, deploying serve/*.yaml, PNG payloads."""

from __future__ import annotations

import base64
import io
import socket
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SERVE_DIR = ROOT / "serve"
TESTS_DIR = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_bytes(size=(32, 32), mode: str = "L", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class TinyMLLMEndpoint:
    """A real HTTP server on 127.0.0.1 with the OpenAI routes the CAS evaluator's MLLM path uses
    (/v1/models, /v1/chat/completions with first-token logprobs), answering from a local MLLM (the
    tiny LLaVA unless `mllm` is given). Faults on demand: `refuse` picks images answered with HTTP
    400 (an MLLM that rejects some inputs), `broken` answers every POST with 500, `fail_first`
    answers the first n POSTs with 503 (a server busy for a moment)."""

    def __init__(self, mllm=None, refuse=lambda image: False, broken: bool = False, fail_first: int = 0):
        import threading
        from http.server import ThreadingHTTPServer

        from craft_ray.models.mllm import tiny_llava

        self.mllm = mllm if mllm is not None else tiny_llava()
        self.refuse, self.broken, self.fail_first, self.lock = refuse, broken, fail_first, threading.Lock()
        self.posts = self.refused = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        import json
        from http.server import BaseHTTPRequestHandler

        import torch

        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, payload):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "tiny-llava", "object": "model"}]})

            def do_POST(self):
                with endpoint.lock:
                    endpoint.posts += 1
                    posts = endpoint.posts
                if endpoint.broken:
                    return self._send(500, {"error": {"message": "boom"}})
                if posts <= endpoint.fail_first:
                    return self._send(503, {"error": {"message": "busy"}})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                parts = body["messages"][0]["content"]
                url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
                text = next(p["text"] for p in parts if p["type"] == "text").removesuffix(
                    " Answer yes or no."
                )
                img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
                image = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255
                with endpoint.lock:
                    if endpoint.refuse(image):
                        endpoint.refused += 1
                        return self._send(400, {"error": {"message": "image refused by the model"}})
                    with torch.no_grad():
                        logp = endpoint.mllm.next_token_logprobs(image, [text])[0]
                k = logp.shape[0] if body["top_logprobs"] == -1 else body["top_logprobs"]
                top = torch.topk(logp, k)
                tokens = endpoint.mllm.processor.tokenizer.convert_ids_to_tokens(top.indices.tolist())
                entries = [
                    {"token": t, "logprob": float(v)}
                    for t, v in zip(tokens, top.values.tolist(), strict=True)
                ]
                content = [{"token": tokens[0], "logprob": entries[0]["logprob"], "top_logprobs": entries}]
                self._send(200, {"choices": [{"index": 0, "logprobs": {"content": content}}]})

        return Handler
