"""Secrets never reach a message we print or a file we write: `redact` masks the API keys we
know (their exact values, from the environment) and anything shaped like a credential
(bearer tokens, `sk-...` / `hf_...` keys, `api_key=...`, passwords in URLs) in text that came
from elsewhere, such as a server's error body that echoes our request headers."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

MASK = "***"
# Environment variables whose values are secrets (OPENAI_API_KEY, HF_TOKEN, MY_SECRET, ...).
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.IGNORECASE)
_MIN_SECRET_LEN = 6  # shorter values ("1", "yes") would mask ordinary words
# Each pattern: (?P<keep>...) stays, the secret after it becomes ***, (?P<tail>...) stays.
_PATTERNS = [
    re.compile(p)
    for p in (
        # "Authorization: Bearer abc", "Basic abc" (any header echo); "token <long string>"
        r"(?i)(?P<keep>\b(?:bearer|basic)(?:\s+|%20))[A-Za-z0-9\-._~+/=]{4,}",
        r"(?i)(?P<keep>\btoken\s+)[A-Za-z0-9\-._~+/=]{16,}",
        r"(?i)(?P<keep>authorization['\"]?\s*[:=]\s*['\"]?)(?!bearer|basic)[^'\",}\s]+",
        # well-known key shapes: OpenAI sk-..., Hugging Face hf_..., GitHub gh?_...
        r"(?P<keep>)\b(?:sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{8,}|gh[pousr]_[A-Za-z0-9]{8,})",
        # api_key=value, "access_token": "value", password: value
        r"(?i)(?P<keep>(?:api[_-]?key|access[_-]?token|secret|password)['\"]?\s*[:=]\s*['\"]?)"
        r"[^'\"&\s,}]{4,}",
        # credentials in a URL: scheme://user:password@host
        r"(?i)(?P<keep>\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^/\s@]+(?P<tail>@)",
    )
]


def _mask(match: re.Match[str]) -> str:
    return match.group("keep") + MASK + (match.groupdict().get("tail") or "")


def known_secrets() -> list[str]:
    """Values of environment variables named like secrets (…KEY, …TOKEN, …SECRET, …), but
    not paths or phrases (HF_TOKEN_PATH-like settings are not secrets to mask)."""
    return [
        value
        for name, value in os.environ.items()
        if _SECRET_ENV.search(name)
        and len(value) >= _MIN_SECRET_LEN
        and not any(c.isspace() or c in "/\\" for c in value)
    ]


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every given secret (and every known one) and every credential-shaped
    string replaced by ***."""
    for secret in sorted({*known_secrets(), *(s for s in secrets if s)}, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LEN:
            text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(_mask, text)
    return text
