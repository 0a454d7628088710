"""What identifies an evaluation run: the model's content and the protocol it was evaluated
under. A run directory is resumed only by the same identity; runs compared, reported or
selected between are checked for the same protocol.

- The model: a local directory by its content fingerprint (`model_fingerprint`: config and
  sampled weight bytes), so a relative path that now names another model is refused and the
  same model under another path is accepted; a hub id by its name; a served model by its
  served name (a server may come back on another port); a replay by its responses file.
- The protocol (`PROTOCOL_FIELDS`): prompt name and the sha256 of its template, stop strings,
  the new-token limit, the grader version, the decoding ("greedy", or the temperature and
  top-p sampled at: eval/sampling.py) and, for free-form tasks, the coverage judge.
  Replayed runs record no prompt, stops, limit or decoding (the responses were made
  elsewhere), runs without tasks no judge: those fields are unknown, never a difference. A
  run.json from before decoding was recorded was greedy (nothing else existed).
- A sampled run's seed (`RESUME_FIELDS`): a run resumes only with the seed it was drawn
  with, but two runs drawn with other seeds are not evaluated differently. Nor is the number
  of samples part of the identity: more `--samples` resume a run with the samples it lacks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l2smerge.eval.sampling import GREEDY
from l2smerge.util.errors import L2SError

PROTOCOL_FIELDS = (
    "prompt",
    "prompt_sha256",
    "stop",
    "max_tokens",
    "grader_version",
    "sampling",
    "judge",
)
RESUME_FIELDS = ("seed",)
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
_PICKLE_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")


# -- the model ----------------------------------------------------------------------------


def looks_like_path(name: str) -> bool:
    """A model argument meant as a local path, not a hub id: it starts with `.`, `/` or `~`,
    is no valid hub id (`org/name` at most one slash), or its first part is a local folder."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.startswith((".", "/", "~")) or name.endswith("/") or "\\" in name:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return "/" in name and Path(name).parent.is_dir()


def check_local_model(model: str, *, allow_pickle: bool) -> Path | None:
    """The model directory `model` names, checked; None for a hub id. A path-like name that
    does not exist fails at once instead of being tried on the hub; pickle-only weights need
    `allow_pickle` (the rule `l2smerge merge` follows)."""
    path = Path(model).expanduser()
    if not path.exists():
        if looks_like_path(model):
            raise L2SError(f"model {model!r}: no such directory (a local path, not a hub id)")
        return None
    if not path.is_dir():
        raise L2SError(f"model {model!r}: not a model directory (a file)")
    if not (path / "config.json").is_file():
        raise L2SError(f"{path}: not a model directory (no config.json)")
    safetensors = any(any(path.glob(p)) for p in _WEIGHT_PATTERNS)
    pickle = any(any(path.glob(p)) for p in _PICKLE_PATTERNS)
    if pickle and not safetensors and not allow_pickle:
        raise L2SError(
            f"{path}: holds pickle weights (*.bin), which can run code when loaded; convert "
            "to safetensors or pass --allow-pickle"
        )
    if not safetensors and not pickle:
        raise L2SError(f"{path}: not a model directory (no *.safetensors weights)")
    return path.resolve()


def model_identity(
    model: str,
    backend: str,
    *,
    allow_pickle: bool = False,
    responses: str | Path | None = None,
) -> dict[str, str]:
    """How the run's model is known: {"fingerprint"}, {"hub"}, {"served_model"} or
    {"responses", "label"}. Checks a local model (see `check_local_model`) first."""
    if backend == "replay":
        return {"responses": str(Path(responses).resolve()) if responses else "", "label": model}
    if backend == "openai":
        return {"served_model": model}
    path = check_local_model(model, allow_pickle=allow_pickle)
    if path is None:
        return {"hub": model}
    from l2smerge.util.cache import model_fingerprint

    return {"fingerprint": f"sha256:{model_fingerprint(path)}"}


def describe_model(identity: dict[str, Any]) -> str:
    if "fingerprint" in identity:
        return f"fingerprint {identity['fingerprint'][:19]}"
    if "hub" in identity:
        return f"hub model {identity['hub']}"
    if "served_model" in identity:
        return f"served model {identity['served_model']}"
    if "responses" in identity:
        return f"{identity.get('label')!r} replayed from {identity['responses']}"
    return json.dumps(identity)


# -- the protocol -------------------------------------------------------------------------


def identity_differences(earlier: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two run identities ({"model": ..., PROTOCOL_FIELDS...}), one
    phrase each ("model: fingerprint sha256:ab… there, fingerprint sha256:cd… now";
    "max_tokens: 10240 (there); 4096 (now)"). A field one of them lacks counts here: a run is
    resumed only by exactly its identity."""
    out = []
    if earlier.get("model") != now.get("model"):
        there, here = describe_model(earlier.get("model") or {}), describe_model(now["model"])
        out.append(f"model: {there} there, {here} now")
    sides = [_Side("there", earlier), _Side("now", now)]
    out += protocol_differences(*sides, unknown_differs=True)
    for key in RESUME_FIELDS:
        if earlier.get(key) != now.get(key):
            out.append(f"{key}: {earlier.get(key)} (there); {now.get(key)} (now)")
    return out


class _Side:
    def __init__(self, label: str, identity: dict[str, Any]):
        self.label, self.protocol = label, protocol_of(identity)


def protocol_differences(
    *runs: Any, unknown_differs: bool = False, fields: Sequence[str] = PROTOCOL_FIELDS
) -> list[str]:
    """One line per protocol field the runs recorded differently ("prompt: qwen25-math-cot
    (ties, system2); chat (system1)"); [] when they agree. Each run has `.label` and
    `.protocol` (a dict of PROTOCOL_FIELDS, or None when its run.json records none); unknown
    values are left out, never counted as a difference, unless `unknown_differs`. `fields`:
    only these (e.g. ("judge",) for the coverage A/B)."""
    lines = []
    for key in fields:
        groups: dict[str, list[str]] = {}
        for run in runs:
            value = (run.protocol or {}).get(key)
            if value is not None or unknown_differs:
                groups.setdefault(_show(key, value), []).append(run.label)
        if len(groups) > 1:
            if key == "prompt_sha256":
                key = "prompt template (same name, other bytes: another chat template or file)"
            shown = "; ".join(f"{value} ({', '.join(labels)})" for value, labels in groups.items())
            lines.append(f"{key}: {shown}")
    return lines


def _show(key: str, value: Any) -> str:
    if value is None:
        return "unknown"
    if key == "prompt_sha256":
        return f"sha256 {value[:12]}"
    if key == "sampling" and isinstance(value, dict):  # numbers as eval's header prints them
        temperature, top_p = _number(value.get("temperature")), _number(value.get("top_p"))
        return f"temperature {temperature}, top-p {top_p}"
    if key in ("stop", "judge"):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def protocol_of(identity: dict[str, Any] | None) -> dict[str, Any] | None:
    """The PROTOCOL_FIELDS of a run identity; None when there is none (an older run.json)."""
    if not identity:
        return None
    protocol = {key: identity.get(key) for key in PROTOCOL_FIELDS}
    if "sampling" not in identity and identity.get("max_tokens") is not None:
        protocol["sampling"] = GREEDY  # generated before decoding was recorded: greedy
    return protocol


def check_same_protocol(runs: Sequence[Any], what: str) -> None:
    """Refuse to `what` (e.g. "select a merge") across runs evaluated under other protocols."""
    problems = protocol_differences(*runs)
    if problems:
        raise L2SError(
            f"cannot {what}: the runs were evaluated differently ({'; '.join(problems)}); "
            "evaluate them with the same prompt, stops, --max-tokens, grader and decoding"
        )


def protocol_warning(differences: Sequence[str]) -> str:
    """The differences as a loud markdown block for compare.md / report.md ("" when none)."""
    if not differences:
        return ""
    lines = [
        "> **Warning: these runs were evaluated differently**; their accuracy and length",
        "> differences mix the models' effect with the protocol's:",
        *(f"> - {line}" for line in differences),
        "",
        "",
    ]
    return "\n".join(lines)
