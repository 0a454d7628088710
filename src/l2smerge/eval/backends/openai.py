"""Any OpenAI-compatible endpoint (vLLM serve, SGLang, llama.cpp, `transformers serve`, ...):
bounded concurrency, retries with exponential backoff on 429, 5xx and network errors, a
per-request timeout. The API key comes from an environment variable and is only ever put in
the Authorization header: never printed, logged or written (a server's text quoted in an
error, and a reply echoing the key, pass through util.redact).

A raw prompt (`qwen25-math-cot`, `fewshot`, a file) goes to /v1/completions as its exact text
(a chat endpoint would wrap it in the server's template); `chat` goes to /v1/chat/completions
as messages, rendered by the server. Greedy (temperature 0), or sampled (eval/sampling.py:
temperature, top_p and a seed per sample, one request per sample), with the prompt's stop strings;
the reply is cut at them here too, for servers that ignore `stop`. Tokens: the response
counted with `--tokenizer` when given (what is left after the cut), else the server's
`usage.completion_tokens`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

import httpx

from l2smerge.eval.backends.base import (
    Generation,
    Request,
    count_tokens,
    cut_at_stop,
    load_tokenizer,
)
from l2smerge.eval.sampling import Sampling, sample_seed
from l2smerge.util.daemon_pool import DaemonPool
from l2smerge.util.errors import L2SError
from l2smerge.util.redact import redact

BASE_URL_ENV = "OPENAI_BASE_URL"
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
MAX_RETRY_AFTER_S = 60.0
API_CHOICES = ("auto", "chat", "completions")


class ServerError(Exception):
    """A request that failed for good; carries a message safe to show (no headers)."""


def check_base_url(base_url: str) -> str:
    """An http(s) URL with a host and a valid port, else a one-line error (printed without
    any password the URL holds)."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise L2SError(f"--base-url {redact(base_url)!r}: not a valid URL ({exc})") from None
    if url.port is not None and not 0 < url.port < 65536:
        raise L2SError(f"--base-url {redact(base_url)!r}: port {url.port} is not 1 .. 65535")
    if url.scheme not in ("http", "https") or not url.host:
        raise L2SError(
            f"--base-url {redact(base_url)!r}: expected http(s)://HOST[:PORT]/..., e.g. "
            "http://127.0.0.1:8000/v1"
        )
    return base_url


class OpenAIBackend:
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api: str = "auto",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 600.0,
        retries: int = 5,
        backoff: float = 1.0,
        tokenizer: Any | None = None,
        sampling: Sampling | None = None,
        **_ignored: Any,
    ):
        base_url = base_url or os.environ.get(BASE_URL_ENV)
        if not base_url:
            raise L2SError(
                f"--backend openai needs --base-url (or ${BASE_URL_ENV}), "
                "e.g. http://127.0.0.1:8000/v1"
            )
        if api not in API_CHOICES:
            raise L2SError(f"--api must be one of {', '.join(API_CHOICES)}, got {api!r}")
        check_base_url(base_url)
        if concurrency < 1 or retries < 0 or not 0 < timeout < float("inf"):
            raise L2SError("--concurrency and --timeout must be positive, --retries >= 0")
        self.model = model
        self.sampling = sampling or Sampling()
        self.api = api
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self._key = os.environ.get(api_key_env) or None
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout)
        # Renders `chat` prompts for the completions endpoint and counts tokens.
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.stop_ids: tuple[int, ...] = ()  # the server stops at the model's EOS
        self.context_length: int | None = None

    def api_for(self, raw: bool) -> str:
        """The endpoint a prompt goes to: completions for raw text, chat for messages."""
        if self.api == "auto":
            return "completions" if raw else "chat"
        if self.api == "chat" and raw:
            raise L2SError(
                "--api chat cannot send a raw prompt (the server would wrap it in its chat "
                "template); use --api completions, or --prompt chat"
            )
        if self.api == "completions" and not raw and self.tokenizer is None:
            raise L2SError(
                "--api completions with --prompt chat renders the chat template here: "
                "give --tokenizer (or use --api chat)"
            )
        return self.api

    def endpoint(self, api: str) -> str:
        return f"{self.base_url}/{'chat/completions' if api == 'chat' else 'completions'}"

    def _body(self, request: Request, max_tokens: int, api: str) -> dict[str, Any]:
        prompt = request.prompt
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": 0}
        if not self.sampling.greedy:
            body["temperature"] = self.sampling.temperature
            body["top_p"] = self.sampling.top_p
            body["seed"] = sample_seed(self.sampling.seed, request.key, request.sample)
        if prompt.stop:
            body["stop"] = list(prompt.stop)
        if api == "completions":
            body["prompt"] = prompt.text
        else:
            body["messages"] = list(prompt.messages or ())
        return body

    def _redact(self, text: str) -> str:
        """`text` (a server's, which may echo our headers) with the key and anything shaped
        like a credential masked."""
        return redact(text, [self._key])

    def _post(self, request: Request, max_tokens: int) -> dict[str, Any]:
        api = self.api_for(request.prompt.raw)
        body = self._body(request, max_tokens, api)
        endpoint = self.endpoint(api)
        what = f"{request.key[0]} id {request.key[1]}"
        for attempt in range(self.retries + 1):
            wait_s = self.backoff * 2**attempt
            try:
                reply = self.client.post(endpoint, json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                problem = f"{type(exc).__name__}"
            except (httpx.HTTPError, httpx.InvalidURL) as exc:  # retrying will not help
                raise ServerError(self._redact(f"{endpoint} failed for {what}: {exc}")) from None
            else:
                if reply.status_code == 200:
                    try:
                        return reply.json()
                    except ValueError:
                        problem = "a reply that is not JSON"
                elif reply.status_code in RETRY_STATUS:
                    problem = f"HTTP {reply.status_code}: {self._redact(reply.text)[:200]}"
                    retry_after = reply.headers.get("retry-after", "")
                    if retry_after.replace(".", "", 1).isdigit():
                        wait_s = min(float(retry_after), MAX_RETRY_AFTER_S)
                else:  # 400, 401, 404...: retrying will not help
                    raise ServerError(
                        f"{endpoint} answered HTTP {reply.status_code} for {what}: "
                        f"{self._redact(reply.text)[:300]}"
                    )
            if attempt < self.retries:
                time.sleep(wait_s)
        raise ServerError(
            self._redact(f"{endpoint} failed for {what} after {self.retries} retries ({problem})")
        )

    def _generation(self, request: Request, reply: Any) -> Generation:
        endpoint = self.endpoint(self.api_for(request.prompt.raw))
        what = f"{endpoint} sent a reply for {request.key[0]} id {request.key[1]}"
        choice = reply.get("choices") if isinstance(reply, dict) else None
        choice = choice[0] if isinstance(choice, list) and choice else None
        if not isinstance(choice, dict):
            raise ServerError(f"{what} without choices")
        if "message" in choice:
            message = choice["message"]
            if not isinstance(message, dict):
                raise ServerError(f"{what} whose message is not an object")
            text = _text(message.get("content"), what)
            # Servers with a reasoning parser split the thinking out; it is part of the
            # response for length and reflection.
            reasoning = _text(message.get("reasoning_content") or message.get("reasoning"), what)
            if reasoning:
                text = f"{reasoning}\n{text}"
        else:
            text = _text(choice.get("text"), what)
        if self._key:  # a server that echoes the key never gets it written to results
            text = text.replace(self._key, "***")
        text, stopped = cut_at_stop(text, request.prompt.stop)
        tokens = count_tokens(self.tokenizer, text)
        if tokens is None:
            usage = reply.get("usage")
            tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
            if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
                raise ServerError(
                    f"{what} without a token count (usage.completion_tokens); give "
                    "--tokenizer to count tokens here"
                )
        truncated = choice.get("finish_reason") == "length" and not stopped
        return Generation(text, tokens, truncated)

    def generate(
        self, requests: Sequence[Request], max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        if requests:  # a prompt the chosen --api cannot send fails before any request
            self.api_for(requests[0].prompt.raw)
        pool = DaemonPool(self.concurrency, "l2s-http")
        pending: dict[Future[dict[str, Any]], int] = {}
        queue = iter(range(len(requests)))
        try:
            # Keep at most 2x concurrency submitted, so a failure stops the run quickly.
            for i in queue:
                pending[pool.submit(self._post, requests[i], max_tokens)] = i
                if len(pending) >= 2 * self.concurrency:
                    break
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    try:
                        generation = self._generation(requests[i], future.result())
                    except ServerError as exc:
                        raise L2SError(
                            f"{exc}; the results so far are kept, rerun to resume"
                        ) from None
                    yield i, generation
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending[pool.submit(self._post, requests[nxt], max_tokens)] = nxt
        finally:
            pool.shutdown()

    def close(self) -> None:
        self.client.close()


def _text(value: Any, what: str) -> str:
    """A reply's text field: a string, null, or a list of {"type": "text", "text"} parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        return "".join(p.get("text") or "" for p in value if p.get("type", "text") == "text")
    raise ServerError(f"{what} whose text is a {type(value).__name__}")
