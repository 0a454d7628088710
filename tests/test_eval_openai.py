"""The openai backend against a real OpenAI-compatible server on 127.0.0.1 (`transformers
serve` with a tiny model), and against a small fault-injecting server for retries."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from l2smerge.eval import evaluate
from l2smerge.util.errors import L2SError

SECRET = "sk-test-do-not-print-0123456789"
LAB = [
    {"question": "What is 1+1?", "answer": "2", "level": 1},
    {"question": "What is 12*3?", "answer": "36", "level": 2},
    {"question": "What is 2^10?", "answer": "1024", "level": 2},
    {"question": "Is 7 prime?", "answer": "\\text{yes}", "level": 1},
]


@pytest.fixture()
def lab_data(tmp_path) -> Path:
    (tmp_path / "data" / "lab").mkdir(parents=True)
    (tmp_path / "data" / "lab" / "test.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in LAB)
    )
    return tmp_path / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=2, context=4096)


@pytest.fixture(scope="module")
def served(tiny):
    """`transformers serve` on 127.0.0.1 serving the tiny model, offline."""
    pytest.importorskip("fastapi", reason="needs transformers[serving]")
    serve = Path(sys.executable).with_name("transformers")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = open(tiny.parent / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(serve),
            "serve",
            str(tiny),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(
                    "transformers serve did not start:\n"
                    + (tiny.parent / "serve.log").read_text()[-3000:]
                )
            time.sleep(0.5)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def responses(run: Path) -> dict[int, dict]:
    lines = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    return {x["id"]: x for x in lines}


@pytest.mark.parametrize(
    "prompt,api",
    [("chat", "chat"), ("chat", "completions"), ("qwen25-math-cot", "auto")],
)
def test_transformers_serve_matches_hf_backend(served, tiny, lab_data, tmp_path, prompt, api):
    """The study's raw prompt goes to /v1/completions (api auto) and gives what the hf backend
    gives; so does `chat`, rendered by the server or here."""
    from l2smerge.eval.backends.base import count_tokens, load_tokenizer

    common = dict(data_dir=lab_data, max_tokens=8, progress=False, prompt=prompt)
    evaluate(tiny, "lab", out_dir=tmp_path / "hf", device="cpu", **common)
    counted_here = api != "chat"
    summary = evaluate(
        str(tiny),
        "lab",
        out_dir=tmp_path / "api",
        backend="openai",
        base_url=served,
        api=api,
        concurrency=2,
        tokenizer=tiny if counted_here else None,
        **common,
    )
    lab = summary["benchmarks"]["lab"]
    assert lab["n"] == 4 and lab["truncated_ratio"] == 1.0 and summary["prompt"] == prompt
    local, remote = responses(tmp_path / "hf"), responses(tmp_path / "api")
    assert [local[i]["response"] for i in range(4)] == [remote[i]["response"] for i in range(4)]
    tokenizer = load_tokenizer(str(tiny))
    for i in range(4):
        expected = count_tokens(tokenizer, remote[i]["response"]) if counted_here else 8
        assert remote[i]["tokens"] == expected  # with --tokenizer: the response as returned


class RecordingServer:
    """An OpenAI-compatible server that records each request (path and body) and answers
    every one with `text` and a usage count."""

    def __init__(self, text: str, usage: int | None = 99):
        self.requests: list[tuple[str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.requests.append((self.path, body))
                chat = self.path.endswith("/chat/completions")
                choice = {"index": 0, "finish_reason": "stop"}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                reply = {"choices": [choice]}
                if usage is not None:
                    reply["usage"] = {"completion_tokens": usage}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_raw_prompt_goes_to_completions_greedy_with_the_stops(tmp_path, data_dir):
    """What goes over the wire for the study's prompt: its exact bytes to /v1/completions,
    temperature 0, the toolkit's stops, the limit; a server that ignores `stop` is cut here."""
    from tiny import byte_tokenizer

    from l2smerge.eval.benchmarks import load_items
    from l2smerge.eval.prompts import QWEN25_MATH_COT, TOOLKIT_STOP

    tokenizer_dir = tmp_path / "tok"
    byte_tokenizer().save_pretrained(tokenizer_dir)
    server = RecordingServer("So \\boxed{18}.<|im_end|>ignored after the stop")
    try:
        summary = evaluate(
            "served",
            "gsm8k",
            out_dir=tmp_path / "run",
            backend="openai",
            base_url=server.url,
            tokenizer=tokenizer_dir,
            data_dir=data_dir,
            limit=2,
            progress=False,
        )
    finally:
        server.close()
    items = load_items("gsm8k", data_dir, limit=2)
    assert len(server.requests) == 2
    for path, body in server.requests:
        assert path == "/v1/completions"
        question = next(it.question for it in items if it.question in body["prompt"])
        assert body["prompt"] == QWEN25_MATH_COT.replace("{question}", question.strip())
        assert body["temperature"] == 0 and body["max_tokens"] == 10240
        assert body["stop"] == list(TOOLKIT_STOP) and body["model"] == "served"
    lines = responses_by_key(tmp_path / "run")
    for line in lines.values():
        assert line["response"] == "So \\boxed{18}." and not line["truncated"]
        assert line["tokens"] == len(b"So \\boxed{18}.")  # counted after the cut
    assert summary["prompt"] == "qwen25-math-cot"


def test_sampled_requests_carry_temperature_top_p_and_a_seed_per_sample(tmp_path, lab_data):
    from l2smerge.eval.sampling import sample_seed

    server = RecordingServer("\\boxed{2}", usage=3)
    try:
        summary = evaluate("served", "lab", out_dir=tmp_path / "run", backend="openai",
                           base_url=server.url, data_dir=lab_data, limit=2, progress=False,
                           sampling={"preset": "r1", "samples": 3, "seed": 4})  # fmt: skip
    finally:
        server.close()
    assert len(server.requests) == 6  # one request per sample
    seeds = set()
    for _, body in server.requests:
        assert (body["temperature"], body["top_p"]) == (0.6, 0.95)
        seeds.add(body["seed"])
    assert seeds == {sample_seed(4, ("lab", i), s) for i in range(2) for s in range(3)}
    lab = summary["benchmarks"]["lab"]
    assert lab["samples"] == 3 and lab["accuracy"] == 0.5  # item 0 answers 2, item 1 does not
    assert lab["pass_at_k"] == {"1": 0.5, "2": 0.5, "3": 0.5}


def test_chat_prompt_goes_to_the_chat_endpoint_and_usage_counts(tmp_path, lab_data):
    server = RecordingServer("\\boxed{2}", usage=7)
    try:
        summary = evaluate(
            "served",
            "lab",
            out_dir=tmp_path / "run",
            backend="openai",
            base_url=server.url,
            data_dir=lab_data,
            progress=False,
        )
        wrong = dict(api="chat", prompt="qwen25-math-cot")
        opts = dict(backend="openai", base_url=server.url, data_dir=lab_data, progress=False)
        with pytest.raises(L2SError, match="--api chat cannot send a raw prompt"):
            evaluate("served", "lab", out_dir=tmp_path / "run2", **wrong, **opts)
        sent = len(server.requests)
        # nothing was asked and nothing blocks the corrected rerun into the same directory
        evaluate("served", "lab", out_dir=tmp_path / "run2", prompt="qwen25-math-cot", **opts)
    finally:
        server.close()
    assert {path for path, _ in server.requests[:sent]} == {"/v1/chat/completions"}
    assert {path for path, _ in server.requests[sent:]} == {"/v1/completions"}
    body = server.requests[0][1]
    assert body["messages"][0]["role"] == "system" and body["temperature"] == 0
    assert summary["prompt"] == "chat" and summary["benchmarks"]["lab"]["mean_tokens"] == 7


def test_a_reply_without_usage_and_no_tokenizer_is_named(tmp_path, lab_data):
    server = RecordingServer("\\boxed{2}", usage=None)
    try:
        with pytest.raises(L2SError, match=r"lab id \d without a token count.*--tokenizer"):
            evaluate(
                "served",
                "lab",
                out_dir=tmp_path / "run",
                backend="openai",
                base_url=server.url,
                data_dir=lab_data,
                progress=False,
            )
    finally:
        server.close()


def responses_by_key(run: Path) -> dict[tuple[str, int], dict]:
    lines = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    return {(x["bench"], x["id"]): x for x in lines}


class FaultyServer:
    """An OpenAI-compatible chat endpoint that fails on purpose. `script` maps the attempt
    number of a given question (0, 1, ...) to an HTTP status; after the script, 200 with the
    boxed gold answer. `fail_after` (n): every request after the first n successes gets 500."""

    def __init__(self, script=(429, 500), fail_after=None):
        self.script = list(script)
        self.fail_after = fail_after
        self.attempts: Counter[str] = Counter()
        self.successes = 0
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                question = body["messages"][-1]["content"]
                with server.lock:
                    server.auth.append(self.headers.get("authorization"))
                    attempt = server.attempts[question]
                    server.attempts[question] += 1
                    if attempt < len(server.script):
                        status = server.script[attempt]
                    elif server.fail_after is not None and server.successes >= server.fail_after:
                        status = 500
                    else:
                        status = 200
                        server.successes += 1
                if status != 200:
                    self.send_response(status)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(b'{"error": "injected"}')
                    return
                answer = next(r["answer"] for r in LAB if r["question"] == question)
                reply = {
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {
                                "role": "assistant",
                                "content": f"Wait. \\boxed{{{answer}}}",
                            },
                        }
                    ],
                    "usage": {"completion_tokens": 5},
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_429_then_500_then_success_is_retried(lab_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    server = FaultyServer(script=(429, 500))
    try:
        summary = evaluate(
            "served",
            "lab",
            out_dir=tmp_path / "run",
            backend="openai",
            base_url=server.url,
            api_key_env="MY_KEY",
            retries=2,
            backoff=0.01,
            concurrency=3,
            data_dir=lab_data,
            progress=False,
        )
    finally:
        server.close()
    assert summary["benchmarks"]["lab"]["accuracy"] == 1.0
    assert summary["benchmarks"]["lab"]["mean_tokens"] == 5
    assert summary["benchmarks"]["lab"]["reflective_ratio"] == 1.0
    assert set(server.attempts.values()) == {3}  # 429, 500, 200 for each question
    assert server.auth == [f"Bearer {SECRET}"] * 12


def test_server_failing_for_good_keeps_results_and_resumes(lab_data, tmp_path):
    server = FaultyServer(script=(), fail_after=2)
    opts = dict(
        out_dir=tmp_path / "run",
        backend="openai",
        retries=1,
        backoff=0.01,
        concurrency=1,
        data_dir=lab_data,
        progress=False,
    )
    try:
        with pytest.raises(L2SError, match=r"failed for lab id 2 after 1 retries \(HTTP 500"):
            evaluate("served", "lab", base_url=server.url, **opts)
    finally:
        server.close()
    assert sorted(responses(tmp_path / "run")) == [0, 1]
    healthy = FaultyServer(script=())
    try:
        summary = evaluate("served", "lab", base_url=healthy.url, **opts)
    finally:
        healthy.close()
    assert summary["benchmarks"]["lab"]["n"] == 4
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == [0, 1, 2, 3]
    assert sum(healthy.attempts.values()) == 2  # only the two missing items were asked


def test_cli_server_error_exit_2_and_key_never_printed(lab_data, tmp_path):
    server = FaultyServer(script=(500, 500, 500))
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "l2smerge",
                "eval",
                "served",
                "--bench",
                "lab",
                "--backend",
                "openai",
                "--base-url",
                server.url,
                "--retries",
                "1",
                "--data-dir",
                str(lab_data),
                "-o",
                str(tmp_path / "run"),
            ],
            env={**os.environ, "OPENAI_API_KEY": SECRET},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.close()
    assert proc.returncode == 2
    assert "after 1 retries (HTTP 500" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert all(SECRET not in p.read_text() for p in (tmp_path / "run").iterdir())
    assert server.auth[0] == f"Bearer {SECRET}"


def test_missing_base_url(lab_data, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(L2SError, match="needs --base-url"):
        evaluate(
            "m", "lab", out_dir=tmp_path / "o", backend="openai", data_dir=lab_data, progress=False
        )


def test_a_server_echoing_the_key_in_an_error_is_redacted(lab_data, tmp_path, monkeypatch):
    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            body = f"bad request; headers were: {dict(self.headers)}".encode()
            self.send_response(400)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    try:
        with pytest.raises(L2SError, match="answered HTTP 400") as caught:
            evaluate(
                "served",
                "lab",
                out_dir=tmp_path / "run",
                backend="openai",
                base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                data_dir=lab_data,
                progress=False,
            )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert SECRET not in str(caught.value) and "Bearer ***" in str(caught.value)
