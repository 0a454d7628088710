"""What a merged model carries about its making: OUT/l2smerge.json, OUT/merge.yaml (the config
it ran, re-runnable with `l2smerge merge OUT/merge.yaml -o NEW`) and OUT/README.md (a model
card with the recipe)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import l2smerge
from l2smerge.merge.config import MergeConfig
from l2smerge.methods.registry import Paper
from l2smerge.util.atomic import write_json_atomic, write_text_atomic
from l2smerge.util.cache import cached_file_sha256, file_sha256


class Fingerprinter:
    """Hashes every input weight file in a background thread while the merge runs."""

    def __init__(self, inputs: dict[str, list[Path]]) -> None:
        self.inputs = inputs
        self.result: dict[str, dict[str, Any]] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="l2smerge-fingerprint", daemon=True)

    def start(self) -> Fingerprinter:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for model, files in self.inputs.items():
                hashes = {f.name: h for f, h in cached_file_sha256(files).items()}
                combined = hashlib.sha256(
                    "".join(f"{n}:{h}\n" for n, h in sorted(hashes.items())).encode()
                ).hexdigest()
                self.result[model] = {"fingerprint": f"sha256:{combined}", "files": hashes}
        except BaseException as exc:  # reported by join(), in the caller's thread
            self._error = exc

    def join(self) -> dict[str, dict[str, Any]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.result


STUDY = (
    "Wu et al. 2025, Unlocking Efficient Long-to-Short LLM Reasoning with Model Merging",
    "https://arxiv.org/abs/2503.20641",
)


def _papers(method: str, on: str | None) -> tuple[Paper, ...]:
    """The papers the method's registration names (none for a method no longer registered,
    e.g. in the record of an old merge)."""
    from l2smerge.methods import resolve_method
    from l2smerge.util.errors import L2SError

    try:
        return resolve_method(method, on).papers
    except L2SError:
        return ()


def hub_source(path: str | Path) -> dict[str, str] | None:
    """{"hub_id", "revision"} when `path` is a snapshot in the Hugging Face cache
    (.../models--ORG--NAME/snapshots/REVISION), the layout `hf download` and
    `from_pretrained` leave; None for any other folder."""
    parts = Path(path).parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            return {
                "hub_id": parts[i][len("models--") :].replace("--", "/"),
                "revision": parts[i + 2],
            }
    return None


def _calibration_record(path: Path | None) -> dict[str, str] | None:
    return None if path is None else {"path": str(path), "sha256": file_sha256(Path(path))}


def write_provenance(
    out: Path,
    config: MergeConfig,
    *,
    parameters: dict[str, Any],
    fingerprints: dict[str, dict[str, Any]],
    output: dict[str, Any],
) -> None:
    """Write l2smerge.json, merge.yaml and README.md into the (temporary) output folder."""
    roles: dict[str, list[str]] = {}
    if config.base is not None:
        roles.setdefault(str(config.base), []).append("base")
    for i, m in enumerate(config.models):
        roles.setdefault(str(m.path), []).append(f"model {i + 1}")
    inputs = [
        {
            "path": path,
            "role": ", ".join(r),
            **(hub_source(path) or {}),
            **fingerprints.get(path, {}),
        }
        for path, r in roles.items()
    ]
    record = {
        "l2smerge_version": l2smerge.__version__,
        "method": config.method,
        "on": config.on,
        "parameters": parameters,
        "per_model_parameters": [m.parameters for m in config.models],
        "seed": config.seed,
        "preset": config.preset,
        "calibration": _calibration_record(config.calibration),
        "per_model_calibration": [_calibration_record(m.calibration) for m in config.models],
        "inputs": inputs,
        "config_from": str(config.config_source),
        "output": output,
        "config": config.model_dump(mode="json"),  # the recipe (merge.yaml)
        "options": config.options.model_dump(mode="json"),  # how it ran
        # every file of the output folder: `merge --force` replaces a folder holding no other
        "files": sorted({*os.listdir(out), "l2smerge.json", "merge.yaml", "README.md"}),
    }
    write_json_atomic(out / "l2smerge.json", record)
    recipe = config.to_yaml()
    write_text_atomic(out / "merge.yaml", recipe)
    write_text_atomic(out / "README.md", model_card(record, recipe))


def model_card(
    record: dict[str, Any],
    recipe: str,
    *,
    evaluation: str | None = None,
    model_path: str = "path/to/this/model",
) -> str:
    """The model card (README.md) of a merged model from its l2smerge.json `record`: what was
    merged (hub ids where known), the method and its paper, the parameters, the recipe, a
    usage snippet, and `evaluation` (markdown, e.g. a sweep's numbers) when given."""
    method, on = record["method"], record.get("on")
    inputs = record["inputs"]
    hub_ids = [i["hub_id"] for i in inputs if i.get("hub_id")]
    lines = ["---"]
    if hub_ids:  # Hub metadata: base_model takes hub ids only, never local paths
        lines.append("base_model:")
        lines.extend(f"  - {json.dumps(h)}" for h in hub_ids)
    lines += ["tags:", '  - "merge"', '  - "l2smerge"', '  - "long-to-short"']
    lines += ["library_name: transformers", "---", ""]
    name = method + (f" on {on}" if on else "")
    lines += [f"# Merged model: {name}", ""]
    lines.append(
        f"Made with l2smerge {record['l2smerge_version']} by **{name}** merging, for "
        f"long-to-short reasoning by model merging ([{STUDY[0]}]({STUDY[1]}))."
    )
    lines += ["", "## Merged models", "", "| role | model | fingerprint |", "|---|---|---|"]
    for item in inputs:
        where = f"`{item['path']}`"
        if item.get("hub_id"):
            link = f"https://huggingface.co/{item['hub_id']}"
            where = f"[{item['hub_id']}]({link}) (revision `{item['revision']}`)"
        lines.append(f"| {item['role']} | {where} | `{item.get('fingerprint', '-')}` |")
    lines += ["", "## Method", ""]
    papers = "; ".join(f"[{p.citation}]({p.url})" for p in _papers(method, on))
    lines.append(f"- `{name}`" + (f": {papers}" if papers else ""))
    if record.get("preset"):
        lines.append(f"- preset `{record['preset']}` (the study's settings)")
    lines += ["", "Parameters:", ""]
    for key, value in record["parameters"].items():
        lines.append(f"- `{key}`: `{json.dumps(value)}`")
    for i, per_model in enumerate(record.get("per_model_parameters") or []):
        for key, value in per_model.items():
            lines.append(f"- `{key}` for model {i + 1}: `{json.dumps(value)}`")
    lines.append(f"- `seed`: `{record['seed']}`")
    output = record["output"]
    lines += [
        "",
        f"Output: {output['num_tensors']} tensors, dtype {output['dtype']}, "
        f"{output['num_shards']} shard(s).",
    ]
    if evaluation:
        lines += ["", "## Evaluation", "", evaluation.rstrip()]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{model_path}")',
        f'model = AutoModelForCausalLM.from_pretrained("{model_path}", torch_dtype="auto")',
        'messages = [{"role": "user", "content": "What is 17 * 23?"}]',
        "inputs = tokenizer.apply_chat_template(",
        '    messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"',
        ")",
        "output = model.generate(**inputs, max_new_tokens=2048)",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], '
        "skip_special_tokens=True))",
        "```",
        "",
        f"With vLLM: `vllm serve {model_path}`.",
        "",
        "## Recipe",
        "",
        "Re-run with `l2smerge merge merge.yaml -o OUT`:",
        "",
        "```yaml",
        recipe.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
