"""Train the lab pair, nanoGPT style: settings at the top, then the script, top to bottom.

    System 1: a tiny Qwen2, first "pretrained" from scratch on raw text that forms the lookup
              skill (copying repeated strings, then walking a question's chains), then
              fine-tuned to chat: usually it states the answer at once ("So q=X."), sometimes
              it walks the chain first. Greedy, it states at once, so it is right on one-hop
              questions and guesses on longer ones, though it knows the walk.
    System 2: System 1 fine-tuned, gently, to always walk the chain, state the answer, then
              reflect 0-3 rounds ("Wait, let me double check: ...", the same walk and answer
              again), then box it.

Why this pair merges as the study's does (docs/lab.md): the walk is shared by both models and
System 2 only turns it from occasional to certain, a large change of a small preference, while
its reflection is a new habit held with a modest margin (the number of rounds varies). Halfway
between the two, the walk wins and the reflection loses: the merge walks, states and boxes,
System 2's accuracy at a quarter of its length. A gentle fine-tune keeps the pair close
enough to interpolate (trained hard, lr 1e-3 for 1,000 steps, an earlier System 2 scored 0%
at every interpolation).

Chat examples are exactly what the evaluator sends: the user question rendered by the chat
template with add_generation_prompt=True (the template drops the system prompt), then the
response and <|im_end|>; loss on the response and <|im_end|> only. Every batch is freshly
generated, so there is no training set to overfit; the test set uses a seed no batch uses.

    l2smerge lab train -o DIR --seed 0 [--threads 1]    (or: python -m l2smerge.lab.train DIR)
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from l2smerge.lab.task import (
    CONSTANTS,
    LEVELS,
    VARIABLES,
    Item,
    brief_answer,
    copy_drill,
    long_answer,
    lookup_drill,
    make_item,
    make_items,
    short_answer,
)
from l2smerge.lab.tokenizer import build_tokenizer
from l2smerge.util.atomic import replace_folder, temp_dir_beside

# --- settings -------------------------------------------------------------------------------
THREADS = 2  # 1 is faster when other jobs share the cores (OpenMP waits on them)
# model: a tiny Qwen2
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 128, 256, 4, 4, 4
MAX_POSITIONS = 512
BATCH = 64
# System 1, stage 1 ("pretraining", raw text): copy drills form induction heads, lookup
# drills turn them into the lookup skill (see task.copy_drill and task.lookup_drill)
PRE_STEPS, PRE_LR, PRE_WARMUP = 700, 2e-3, 50  # constant lr after warmup: decaying it
# while the lookup is still forming froze it half-learned (docs/lab.md)
PRE_COPY_FRACTION = 0.3  # the rest are lookup drills
# System 1, stage 2: chat; some lookup drills keep the skill
S1_STEPS, S1_LR, S1_WARMUP = 200, 1e-3, 20
S1_DRILL_FRACTION = 0.3
S1_WALK_SHARE = 0.3  # of its answers walk the chain first; the rest state the answer at once,
# so System 1 knows the walk but, greedy, skips it (and guesses from two hops on)
# System 2: fine-tuned from System 1 on long answers: the walk, the answer, then 0-3 rounds
# of reflection that repeat it, drawn per example with weights that grow with the chain's
# length, as R1 reflects more on harder problems. Greedy takes the likeliest continuation at
# each round boundary: one round on levels 1-2 (reflect 85:15, then stop 65:35), two on
# level 3 (72:28 on, then stop 62:38), three on levels 4-5 (84:16, then 69:31 on). Every
# preference stays modest, so a merge can turn the reflection down round by round.
S2_STEPS, S2_LR, S2_WARMUP = 250, 3e-4, 50
S2_BATCH = 32  # long answers: half the batch keeps the stage at a few minutes
REFLECTION_ROUNDS = {  # level -> weights of 0, 1, 2 and 3 rounds
    1: (0.15, 0.55, 0.2, 0.1),
    2: (0.15, 0.55, 0.2, 0.1),
    3: (0.1, 0.25, 0.4, 0.25),
    4: (0.05, 0.15, 0.25, 0.55),
    5: (0.05, 0.15, 0.25, 0.55),
}
WEIGHT_DECAY, GRAD_CLIP, MIN_LR_FRACTION = 0.1, 1.0, 0.1
# quick check printed during training (the real evaluation is `l2smerge eval` / the demo)
CHECK_EVERY, CHECK_ITEMS = 200, 100
CHECK_SEED = 10_000_019  # never used for training batches
MAX_NEW_TOKENS = 256  # System 2 on level 5 with three rounds: ~210 tokens
# ---------------------------------------------------------------------------------------------

tokenizer = build_tokenizer()
PAD_ID = tokenizer.pad_token_id
EOS_ID = tokenizer.eos_token_id


def prompt_text(question: str) -> str:
    """What the evaluator sends (the system message is dropped by the template)."""
    messages = [
        {
            "role": "system",
            "content": "Please reason step by step, and put your final answer within \\boxed{}.",
        },
        {"role": "user", "content": question},
    ]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_example(item: Item, response: str) -> tuple[list[int], list[int]]:
    prompt = tokenizer(prompt_text(item.question), add_special_tokens=False)["input_ids"]
    answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [EOS_ID]
    return prompt + answer, [-100] * len(prompt) + answer


def encode_drill(text: str) -> tuple[list[int], list[int]]:
    """Raw text (no chat template); loss on everything after the first line, the part the
    first line makes predictable."""
    head, rest = text.split("\n", 1)
    head_ids = tokenizer(head + "\n", add_special_tokens=False)["input_ids"]
    rest_ids = tokenizer(rest, add_special_tokens=False)["input_ids"] + [PAD_ID]
    return head_ids + rest_ids, [-100] * len(head_ids) + rest_ids


Example = Callable[[random.Random], tuple[list[int], list[int]]]


def chat(respond: Callable[[Item, random.Random], str]) -> Example:
    def example(rng: random.Random) -> tuple[list[int], list[int]]:
        item = make_item(rng, rng.choice(LEVELS))
        return encode_example(item, respond(item, rng))

    return example


def system1_answer(item: Item, rng: random.Random) -> str:
    return brief_answer(item) if rng.random() < S1_WALK_SHARE else short_answer(item)


def system2_answer(item: Item, rng: random.Random) -> str:
    weights = REFLECTION_ROUNDS[item.level]
    rounds = rng.choices(range(len(weights)), weights=weights)[0]
    return long_answer(item, rounds)


def drill(rng: random.Random) -> tuple[list[int], list[int]]:
    return encode_drill(lookup_drill(make_item(rng, rng.choice(LEVELS)), rng))


def copy(rng: random.Random) -> tuple[list[int], list[int]]:
    return encode_drill(copy_drill(rng))


def get_batch(
    rng: random.Random, mix: list[tuple[float, Example]], batch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`batch` fresh examples, each drawn from `mix` (shares summing to 1), right-padded."""
    shares, makers = zip(*mix, strict=True)
    examples = [rng.choices(makers, weights=shares)[0](rng) for _ in range(batch)]
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((batch, width), PAD_ID)
    labels = torch.full((batch, width), -100)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids, labels, mask


def new_model(seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    # eager attention: faster than sdpa for these tiny shapes on CPU
    config._attn_implementation = "eager"
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.do_sample = False
    return model


@torch.no_grad()
def quick_check(model: Qwen2ForCausalLM, n: int | None = None) -> str:
    """Greedy answers on held-out items: accuracy per level, mean length, reflective share."""
    n = n or CHECK_ITEMS
    model.eval()
    items = make_items(n, CHECK_SEED)
    tokenizer.padding_side = "left"
    enc = tokenizer(
        [prompt_text(it.question) for it in items],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train()
    right = {lv: [] for lv in LEVELS}
    for it, text in zip(items, texts, strict=True):
        boxed = text.rsplit("\\boxed{", 1)[-1].split("}")[0] if "\\boxed{" in text else ""
        right[it.level].append(boxed == it.answer)
    acc = " ".join(f"L{lv}={100 * sum(r) / max(len(r), 1):.0f}" for lv, r in right.items())
    total = sum(sum(r) for r in right.values()) / n
    length = sum(len(t) for t in texts) / n
    reflective = sum("wait" in t.lower() for t in texts) / n
    return f"acc {100 * total:.0f}% ({acc}) len {length:.0f} reflective {100 * reflective:.0f}%"


@torch.no_grad()
def drill_check(model: Qwen2ForCausalLM, per_level: int = 16) -> str:
    """Teacher-forced accuracy on the looked-up tokens (`=x`) of held-out lookup drills."""
    model.eval()
    rng = random.Random(CHECK_SEED)
    lookups = set(tokenizer.convert_tokens_to_ids([f"={c}" for c in VARIABLES + CONSTANTS]))
    scores = []
    for level in LEVELS:
        right = total = 0
        for _ in range(per_level):
            ids, labels = encode_drill(lookup_drill(make_item(rng, level), rng))
            predicted = model(torch.tensor([ids])).logits[0].argmax(-1)
            for t in range(1, len(ids)):
                if labels[t] in lookups:
                    total += 1
                    right += int(predicted[t - 1] == labels[t])
        scores.append(f"L{level}={100 * right / max(total, 1):.0f}")
    model.train()
    return "lookup accuracy " + " ".join(scores)


def train(
    model: Qwen2ForCausalLM,
    steps: int,
    lr: float,
    warmup: int,
    mix: list[tuple[float, Example]],
    seed: int,
    name: str,
    check: Callable[[Qwen2ForCausalLM], str],
    decay: bool = True,
    batch: int | None = None,
) -> None:
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.95)
    )
    model.train()
    start = time.time()
    for step in range(1, steps + 1):
        # linear warmup, then cosine decay to MIN_LR_FRACTION * lr (or constant)
        if step <= warmup:
            step_lr = lr * step / warmup
        elif not decay:
            step_lr = lr
        else:
            progress = (step - warmup) / max(steps - warmup, 1)
            step_lr = lr * (
                MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))
            )
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        ids, labels, mask = get_batch(rng, mix, batch or BATCH)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        if step % 50 == 0 or step == 1:
            print(
                f"{name} step {step}/{steps} loss {loss.item():.4f} lr {step_lr:.1e} "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
        if step % CHECK_EVERY == 0 or step == steps:
            print(f"{name} step {step}: {check(model)}", flush=True)


def save(model: Qwen2ForCausalLM, path: Path) -> None:
    """Write the model and tokenizer to a temporary sibling folder, then rename it."""
    tmp = temp_dir_beside(path)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_folder(tmp, path)


def main(out_dir: str | Path, seed: int = 0, threads: int = THREADS) -> None:
    out_dir = Path(out_dir)
    torch.set_num_threads(threads)
    started = time.time()

    system1 = new_model(seed)
    print(f"System 1: {sum(p.numel() for p in system1.parameters()):,} parameters", flush=True)
    raw_text = [(PRE_COPY_FRACTION, copy), (1 - PRE_COPY_FRACTION, drill)]
    train(
        system1,
        PRE_STEPS,
        PRE_LR,
        PRE_WARMUP,
        raw_text,
        seed * 3 + 1,
        "pretrain",
        drill_check,
        decay=False,
    )
    answering = [(1 - S1_DRILL_FRACTION, chat(system1_answer)), (S1_DRILL_FRACTION, drill)]
    train(system1, S1_STEPS, S1_LR, S1_WARMUP, answering, seed * 3 + 2, "system1", quick_check)
    save(system1, out_dir / "system1")

    system2 = system1  # fine-tuned in place from System 1's weights (already saved)
    reasoning = [(1.0, chat(system2_answer))]
    train(
        system2,
        S2_STEPS,
        S2_LR,
        S2_WARMUP,
        reasoning,
        seed * 3 + 3,
        "system2",
        quick_check,
        batch=S2_BATCH,
    )
    save(system2, out_dir / "system2")
    print(f"done in {time.time() - started:.0f}s: {out_dir}/system1, {out_dir}/system2")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
