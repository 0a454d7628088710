"""What the coverage judges cost (docs/tasks.md).

- lexical: milliseconds per response against its length, measured on responses built from
  the FAQ example's answers repeated to 1k, 10k and 50k tokens, beside the time to merely
  normalise the same text (the floor: matching adds little to it);
- llm: the judge prompt's size per FAQ item (instructions, response, key points) and the
  expected answer size, counted with a tokenizer (default: the shared Qwen tokenizer).

    python benchmarks/judge_cost.py [--tokenizer /work/shared/tokenizers/qwen3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from l2smerge.eval.judges.lexical import judge_response, normalize
from l2smerge.eval.judges.llm import JUDGE_SYSTEM, judge_messages, point_line
from l2smerge.eval.tasks import load_task

REPO = Path(__file__).resolve().parents[1]
FAQ = REPO / "docs" / "examples" / "faq"


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", default="/work/shared/tokenizers/qwen3")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    task = load_task(FAQ / "faq.jsonl")
    logs = {json.loads(x)["id"]: json.loads(x) for x in (FAQ / "logs-v1.jsonl").open()}
    answers = " ".join(row["response"] for row in logs.values()) + " "
    answer_tokens = len(tok.encode(answers))

    print("lexical judge (best of 5):")
    points = task.items[0].key_points + task.items[1].key_points  # phrasings and a regex
    for target in (1_000, 10_000, 50_000):
        text = answers * max(1, round(target / answer_tokens))
        n_tokens = len(tok.encode(text))
        judged = best_of(5, lambda text=text: judge_response(text, points))
        floor = best_of(5, lambda text=text: normalize(text))
        print(
            f"  {n_tokens:>6} tokens ({len(text):>7} chars): {1000 * judged:7.1f} ms to judge "
            f"{len(points)} key points, {1000 * judged / n_tokens * 1000:.2f} ms per 1k tokens; "
            f"normalising alone {1000 * floor:7.1f} ms (ratio {judged / floor:.2f})"
        )

    def chat_tokens(messages) -> int:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tok.encode(text))

    system = chat_tokens([{"role": "system", "content": JUDGE_SYSTEM}])
    print(f"llm judge: instructions {system} tokens; per FAQ item:")
    totals = []
    for item in task.items:
        response = logs[item.id]["response"]
        lines = [point_line(p) for p in item.key_points]
        prompt = chat_tokens(judge_messages(response, lines))
        answer = json.dumps(
            {"verdicts": [{"point": i + 1, "covered": True, "evidence": p.text}
                          for i, p in enumerate(item.key_points)]}
        )  # fmt: skip
        totals.append(prompt)
        print(
            f"  {item.id:<15} prompt {prompt:>4} tokens (response {len(tok.encode(response)):>3}, "
            f"{len(lines)} key points), answer ~{len(tok.encode(answer))} tokens"
        )
    print(f"  mean prompt {sum(totals) / len(totals):.0f} tokens")


if __name__ == "__main__":
    main()
