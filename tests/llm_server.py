"""A scripted HTTP server on 127.0.0.1 speaking the OpenAI and Anthropic wire formats, for tests."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Each request gets the next scripted reply.


@dataclass
class Reply:
    body: object = None  # dict -> JSON; str/bytes sent as is
    status: int = 200
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    drop: bool = False  # close the connection without any answer


@dataclass
class SeenRequest:
    path: str
    headers: dict  # lower-case names
    body: dict


def openai_reply(text, prompt_tokens=10, completion_tokens=5, finish_reason="stop", model="test-model") -> Reply:
    return Reply({"id": "chatcmpl-1", "object": "chat.completion", "model": model,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                               "finish_reason": finish_reason}],
                  "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens}})


def anthropic_reply(text, input_tokens=10, output_tokens=5, stop_reason="end_turn", model="test-model") -> Reply:
    return Reply({"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                  "content": [{"type": "text", "text": text}], "stop_reason": stop_reason,
                  "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}})


def error_reply(status, message, headers=None) -> Reply:
    return Reply({"error": {"message": message, "type": "error"}}, status=status, headers=headers or {})


class ScriptedServer:
    def __init__(self, replies):
        self.replies = list(replies)
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    server.requests.append(SeenRequest(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                       json.loads(raw)))
                    reply = server.replies.pop(0) if server.replies else error_reply(500, "script exhausted")
                time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    return
                body = reply.body
                data = json.dumps(body).encode() if isinstance(body, dict) else (
                    body.encode() if isinstance(body, str) else body or b"")
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up waiting (timeout tests)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()
