"""A minimal OpenAI-compatible chat server on loopback whose answers come from a `LocalChat`
(the tests' stand-in for vLLM, llama.cpp's server or ollama): POST /v1/chat/completions with
`messages`, `max_tokens` and, optionally, `logprobs` / `top_logprobs`."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sae_fast.analysis.llm import LocalChat


@contextmanager
def serve(chat: LocalChat):
    """Yield (base URL http://127.0.0.1:PORT/v1, the request bodies it received) of a server
    answering with `chat`."""
    lock = threading.Lock()  # one forward pass at a time
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            messages, n = body["messages"], int(body.get("max_tokens", 16))
            with lock:
                text = chat.complete(messages, n) if n > 1 else ""
                choice: dict = {"index": 0, "finish_reason": "stop"}
                if body.get("logprobs"):
                    tops = chat.top_logprobs(messages, int(body.get("top_logprobs", 5)))
                    text = text or tops[0][0]
                    choice["logprobs"] = {
                        "content": [
                            {
                                "token": tops[0][0],
                                "logprob": tops[0][1],
                                "top_logprobs": [{"token": t, "logprob": v} for t, v in tops],
                            }
                        ]
                    }
            choice["message"] = {"role": "assistant", "content": text}
            out = json.dumps({"object": "chat.completion", "model": body["model"],
                              "choices": [choice]}).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()
