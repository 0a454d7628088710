"""Prompt templates, apart from backends. A prompt is the rendered text a completion backend
sends, plus the chat messages a chat endpoint sends, plus stop strings.

- `cot`: the study's zero-shot Qwen2.5-Math CoT prompt for System 2 and merged models,
  rendered with the tokenizer's chat template (raw Qwen chat form without one).
- `fewshot`: our own worked examples as plain text, for System 1 base models.
- a file: plain text with `{question}`, used as the whole prompt.
`auto` is `cot`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2smerge.util.errors import L2SError

COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
RAW_QWEN_CHAT = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
PROMPT_CHOICES = ("auto", "cot", "fewshot")

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
FEWSHOT_STOP = ("\nQuestion:", "\n\nQuestion")


@dataclass(frozen=True)
class Prompt:
    text: str  # the exact string a completion backend feeds the model
    messages: tuple[dict[str, str], ...] | None  # for chat endpoints; None for raw prompts
    stop: tuple[str, ...] = ()


def cot_messages(question: str) -> tuple[dict[str, str], ...]:
    return (
        {"role": "system", "content": COT_SYSTEM},
        {"role": "user", "content": question},
    )


def render_chat(messages: tuple[dict[str, str], ...], tokenizer: Any | None) -> str:
    """Messages through the tokenizer's chat template; the raw Qwen form without one."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    user = next(m["content"] for m in messages if m["role"] == "user")
    return RAW_QWEN_CHAT.format(system=system, question=user)


def fewshot_text(question: str) -> str:
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in FEWSHOT_EXAMPLES)
    return f"{shots}Question: {question}\nAnswer:"


def load_template(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise L2SError(
            f"prompt {str(path)!r} is neither one of {', '.join(PROMPT_CHOICES)} nor a file"
        )
    template = path.read_text(encoding="utf-8")
    if "{question}" not in template:
        raise L2SError(f"{path}: prompt template has no {{question}} placeholder")
    return template


class PromptBuilder:
    """Turns questions into prompts for one prompt choice and tokenizer."""

    def __init__(self, choice: str, tokenizer: Any | None = None):
        self.choice = "cot" if choice == "auto" else choice
        self.tokenizer = tokenizer
        self.template = None if self.choice in PROMPT_CHOICES else load_template(self.choice)

    @property
    def name(self) -> str:
        return self.choice if self.template is None else f"file:{self.choice}"

    def __call__(self, question: str) -> Prompt:
        if self.choice == "cot":
            messages = cot_messages(question)
            return Prompt(render_chat(messages, self.tokenizer), messages)
        if self.choice == "fewshot":
            return Prompt(fewshot_text(question), None, FEWSHOT_STOP)
        # str.replace, not str.format: templates are full of LaTeX braces.
        return Prompt(self.template.replace("{question}", question), None)
