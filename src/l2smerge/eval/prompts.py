"""Named prompts, apart from backends. A prompt turns a benchmark question into the exact text a
completion backend feeds the model (or the messages a chat endpoint sends), with its stops.

- `qwen25-math-cot`, the study's and the default for the math benchmarks: the Qwen2.5-Math
  toolkit's raw ChatML string, the same bytes for every model whatever its chat template (the
  study's script applies none, R1-Distill included). A tokenizer that adds a BOS token to
  encoded text adds it here too, as the toolkit's vLLM call does.
- `chat`: the same system message and question through the tokenizer's chat template (or,
  with `--backend openai --api chat`, the server's); the default for the `lab` benchmark,
  whose models were trained on their template.
- `fewshot`: our own worked examples in the layout of the toolkit's few-shot `cot` prompt,
  for System 1 base models.
- a file: plain text with `{question}`, sent as is.
Old names: `auto` is each benchmark's default prompt, `cot` is `qwen25-math-cot`.

Every prompt stops where the toolkit's does: `</s>`, `<|im_end|>`, `<|endoftext|>` (and the
token ids in `backends.base.stop_token_ids`); `fewshot` also at the next "Question:".
The question is read as the toolkit reads it: stripped, with " (Yes or No)" or " (True or
False)" appended when the gold answer is one of those words.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2smerge.util.errors import L2SError

STUDY_PROMPT = "qwen25-math-cot"
AUTO = "auto"
PROMPT_NAMES = (STUDY_PROMPT, "chat", "fewshot")
ALIASES = {"cot": STUDY_PROMPT}  # the name before the study's exact prompt was added

COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# The toolkit's `qwen25-math-cot` input template, byte for byte (its `{input}` is `{question}`).
QWEN25_MATH_COT = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer within "
    "\\boxed{}.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
)
# The toolkit's stop strings for every prompt type, and the one its few-shot `cot` adds.
TOOLKIT_STOP = ("</s>", "<|im_end|>", "<|endoftext|>")
FEWSHOT_STOP = ("\n\nQuestion:",)

FEWSHOT_EXAMPLES = (
    (
        "A baker makes 24 muffins and sells 3/4 of them. How many muffins are left?",
        "She sells 3/4 * 24 = 18 muffins, so 24 - 18 = 6 are left. The answer is $\\boxed{6}$.",
    ),
    (
        "Solve for $x$: $3x - 7 = 2x + 5$.",
        "Subtracting $2x$ from both sides gives $x - 7 = 5$, so $x = 12$. "
        "The answer is $\\boxed{12}$.",
    ),
    (
        "What is the sum of the interior angles of a hexagon, in degrees?",
        "A polygon with $n$ sides has interior angles summing to $(n-2) \\cdot 180$. "
        "For $n = 6$ this is $4 \\cdot 180 = 720$. The answer is $\\boxed{720}$.",
    ),
    (
        "Simplify $\\sqrt{50} - \\sqrt{8}$.",
        "$\\sqrt{50} = 5\\sqrt{2}$ and $\\sqrt{8} = 2\\sqrt{2}$, so the difference is "
        "$3\\sqrt{2}$. The answer is $\\boxed{3\\sqrt{2}}$.",
    ),
)
# The toolkit's `cot` layout: "Question: q\nAnswer: a" blocks joined by three newlines, then
# the question with "Answer:" (its trailing space stripped, as the toolkit strips the prompt).
FEWSHOT_TEMPLATE = "\n\n\n".join(
    [*(f"Question: {q}\nAnswer: {a}" for q, a in FEWSHOT_EXAMPLES), "Question: {question}\nAnswer:"]
)


@dataclass(frozen=True)
class Prompt:
    # The exact text a completion backend feeds the model; None for `chat` without a
    # tokenizer (only a chat endpoint, which renders the messages itself, can send it).
    text: str | None
    messages: tuple[dict[str, str], ...] | None  # `chat` only: for chat endpoints
    stop: tuple[str, ...] = TOOLKIT_STOP

    @property
    def raw(self) -> bool:
        """A raw string (no chat template): encoded with the tokenizer's special tokens (BOS)."""
        return self.messages is None


def study_question(question: str, gold: str | None = None) -> str:
    """The question as the toolkit's `parse_question` hands it to every prompt."""
    question = question.strip()
    answer = (gold or "").strip().lower()
    if answer in ("true", "false"):
        question += " (True or False)"
    if answer in ("yes", "no"):
        question += " (Yes or No)"
    return question


def cot_messages(question: str) -> tuple[dict[str, str], ...]:
    return (
        {"role": "system", "content": COT_SYSTEM},
        {"role": "user", "content": question},
    )


def resolve_prompt_name(choice: str, default_prompts: Sequence[str]) -> str:
    """`auto` -> the benchmarks' default prompt (one for the run); old names -> new; a name or
    a file path as is. `default_prompts`: the default prompt of each benchmark in the run."""
    choice = ALIASES.get(choice, choice)
    if choice != AUTO:
        return choice
    defaults = sorted(set(default_prompts))
    if len(defaults) > 1:
        raise L2SError(
            f"the benchmarks of this run have different default prompts ({', '.join(defaults)}); "
            "evaluate them into separate runs, or choose one with --prompt"
        )
    return defaults[0] if defaults else STUDY_PROMPT


class PromptBuilder:
    """One named prompt (a name from PROMPT_NAMES, an old name, or a template file), turning
    questions into prompts; `chat` renders with `tokenizer` (None: a chat endpoint renders)."""

    def __init__(self, choice: str, tokenizer: Any | None = None):
        name = ALIASES.get(choice, choice)
        if name == AUTO:
            name = STUDY_PROMPT
        self._file_template: str | None = None
        if name not in PROMPT_NAMES:
            self._file_template = _load_template(name)
            name = f"file:{name}"
        self.name = name
        self.tokenizer = tokenizer
        if (
            name == "chat"
            and tokenizer is not None
            and not getattr(tokenizer, "chat_template", None)
        ):
            where = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
            raise L2SError(
                f"--prompt chat: {where} has no chat template; use --prompt {STUDY_PROMPT} "
                "(the study's raw prompt) or a prompt file"
            )

    @property
    def is_chat(self) -> bool:
        return self.name == "chat"

    @property
    def stop(self) -> tuple[str, ...]:
        return TOOLKIT_STOP + (FEWSHOT_STOP if self.name == "fewshot" else ())

    @property
    def template(self) -> str:
        """The prompt with a literal `{question}` where the question goes: the bytes every
        question is wrapped in. `chat` without a tokenizer: its messages as JSON."""
        if self.name == STUDY_PROMPT:
            return QWEN25_MATH_COT
        if self.name == "fewshot":
            return FEWSHOT_TEMPLATE
        if self._file_template is not None:
            return self._file_template
        messages = cot_messages("{question}")
        if self.tokenizer is None:
            return json.dumps(messages, ensure_ascii=False)
        return self._render_chat(messages)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()

    def _render_chat(self, messages: tuple[dict[str, str], ...]) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )

    def __call__(self, question: str, gold: str | None = None) -> Prompt:
        question = study_question(question, gold)
        if self.is_chat:
            messages = cot_messages(question)
            text = None if self.tokenizer is None else self._render_chat(messages)
            return Prompt(text, messages, self.stop)
        # str.replace, not str.format: templates are full of LaTeX braces.
        return Prompt(self.template.replace("{question}", question), None, self.stop)


def _load_template(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        names = ", ".join((AUTO, *PROMPT_NAMES, *ALIASES))
        raise L2SError(f"prompt {str(path)!r} is neither one of {names} nor a file")
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise L2SError(f"{path}: cannot read the prompt template ({exc})") from None
    if "{question}" not in template:
        raise L2SError(f"{path}: prompt template has no {{question}} placeholder")
    return template
