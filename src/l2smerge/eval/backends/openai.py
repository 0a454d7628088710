"""Any OpenAI-compatible endpoint (vLLM serve, SGLang, llama.cpp, `transformers serve`, ...):
chat or completions API, bounded concurrency, retries with exponential backoff on 429, 5xx
and network errors, a per-request timeout. The API key comes from an environment variable and
is only ever put in the Authorization header: never printed, logged or written."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx

from l2smerge.eval.backends.base import Generation, Request, count_tokens, load_tokenizer
from l2smerge.util.errors import L2SError

BASE_URL_ENV = "OPENAI_BASE_URL"
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
MAX_RETRY_AFTER_S = 60.0


class ServerError(Exception):
    """A request that failed for good; carries a message safe to show (no headers)."""


class OpenAIBackend:
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api: str = "chat",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 600.0,
        retries: int = 5,
        backoff: float = 1.0,
        tokenizer: str | None = None,
        **_ignored: Any,
    ):
        base_url = base_url or os.environ.get(BASE_URL_ENV)
        if not base_url:
            raise L2SError(
                f"--backend openai needs --base-url (or ${BASE_URL_ENV}), "
                "e.g. http://127.0.0.1:8000/v1"
            )
        if api not in ("chat", "completions"):
            raise L2SError(f"--api must be chat or completions, got {api!r}")
        if concurrency < 1 or retries < 0 or timeout <= 0:
            raise L2SError("--concurrency and --timeout must be positive, --retries >= 0")
        self.model = model
        self.api = api
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        key = os.environ.get(api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout)
        # For rendering completions prompts and for counting tokens when the server reports
        # no usage; the server's own count (usage.completion_tokens) is preferred.
        self.tokenizer = load_tokenizer(tokenizer) if tokenizer else None

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"

    def _body(self, request: Request, max_tokens: int) -> dict[str, Any]:
        prompt = request.prompt
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": 0}
        if prompt.stop:
            body["stop"] = list(prompt.stop)
        if self.api == "completions":
            body["prompt"] = prompt.text
        elif prompt.messages is not None:
            body["messages"] = list(prompt.messages)
        else:  # a raw prompt (few-shot, template file) sent to a chat endpoint
            body["messages"] = [{"role": "user", "content": prompt.text}]
        return body

    def _post(self, request: Request, max_tokens: int) -> dict[str, Any]:
        body = self._body(request, max_tokens)
        what = f"{request.key[0]} id {request.key[1]}"
        for attempt in range(self.retries + 1):
            wait_s = self.backoff * 2**attempt
            try:
                reply = self.client.post(self.endpoint, json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                problem = f"{type(exc).__name__}"
            else:
                if reply.status_code == 200:
                    try:
                        return reply.json()
                    except ValueError:
                        problem = "a reply that is not JSON"
                elif reply.status_code in RETRY_STATUS:
                    problem = f"HTTP {reply.status_code}: {reply.text[:200]}"
                    retry_after = reply.headers.get("retry-after", "")
                    if retry_after.replace(".", "", 1).isdigit():
                        wait_s = min(float(retry_after), MAX_RETRY_AFTER_S)
                else:  # 400, 401, 404...: retrying will not help
                    raise ServerError(
                        f"{self.endpoint} answered HTTP {reply.status_code} for {what}: "
                        f"{reply.text[:300]}"
                    )
            if attempt < self.retries:
                time.sleep(wait_s)
        raise ServerError(
            f"{self.endpoint} failed for {what} after {self.retries} retries ({problem})"
        )

    def _generation(self, reply: dict[str, Any]) -> Generation:
        try:
            choice = reply["choices"][0]
            if self.api == "chat":
                message = choice["message"]
                text = message.get("content") or ""
                # Servers with a reasoning parser split the thinking out; it is part of the
                # response for length and reflection.
                reasoning = message.get("reasoning_content") or message.get("reasoning")
                if reasoning:
                    text = f"{reasoning}\n{text}"
            else:
                text = choice["text"] or ""
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"{self.endpoint} sent a reply without choices") from None
        usage = reply.get("usage") or {}
        tokens = usage.get("completion_tokens")
        if not isinstance(tokens, int):
            tokens = count_tokens(self.tokenizer, text)
        return Generation(text, tokens, choice.get("finish_reason") == "length")

    def generate(
        self, requests: Sequence[Request], max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="l2s-http")
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
                        generation = self._generation(future.result())
                    except ServerError as exc:
                        raise L2SError(
                            f"{exc}; the results so far are kept, rerun to resume"
                        ) from None
                    yield i, generation
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending[pool.submit(self._post, requests[nxt], max_tokens)] = nxt
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.client.close()
