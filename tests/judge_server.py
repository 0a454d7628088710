"""A small OpenAI-compatible judge endpoint on 127.0.0.1 for the llm judge's tests: real HTTP,
counted server-side. It judges honestly (a key point is covered when its text occurs in the
response, quoted exactly as evidence) unless told to fail: `statuses` are answered first
(HTTP errors), then `outputs` (raw message contents, e.g. malformed ones), then honest."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RESPONSE = re.compile(r"<response>\n(.*)\n</response>\n\nKey points:\n(.*)\Z", re.DOTALL)


def honest_verdicts(user_message: str) -> dict[str, Any]:
    match = RESPONSE.search(user_message)
    assert match, "the judge prompt lost its <response> block"
    response, points = match.group(1), match.group(2).splitlines()
    verdicts = []
    for line in points:
        number, text = line.split(". ", 1)
        text = text.split(" (also phrased: ")[0]
        at = response.lower().find(text.lower())
        verdicts.append(
            {
                "point": int(number),
                "covered": at >= 0,
                "evidence": response[at : at + len(text)] if at >= 0 else "",
            }
        )
    return {"verdicts": verdicts}


class JudgeServer:
    def __init__(self, statuses=(), outputs=(), echo_auth: bool = False):
        self.statuses = list(statuses)
        self.outputs = list(outputs)
        self.echo_auth = echo_auth
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with server.lock:
                    server.bodies.append(body)
                    auth = self.headers.get("authorization")
                    server.auth.append(auth)
                    status = server.statuses.pop(0) if server.statuses else 200
                    scripted = server.outputs.pop(0) if status == 200 and server.outputs else None
                if status != 200:
                    text = f"error; you sent {auth}" if server.echo_auth else "injected"
                    return self._send(status, {"error": text})
                if scripted is None:
                    user = next(m for m in body["messages"] if m["role"] == "user")
                    scripted = json.dumps(honest_verdicts(user["content"]))
                reply = {
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": scripted},
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20},
                }
                self._send(200, reply)

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("retry-after", "0")
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def requests(self) -> int:
        return len(self.bodies)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
