"""The lab task: multi-hop variable lookup among distractor chains.

A question lists shuffled assignments forming NUM_CHAINS disjoint chains, each `level` hops
long and each ending in a different digit, and asks for the value of one chain's head:

    q=u,k=3,u=w,b=z,w=7,z=1,... What is q?

Why this task (see docs/lab.md): following a chain one written step at a time needs a single
lookup per step, which a tiny transformer learns in a few hundred steps; answering directly
needs `level` lookups inside one forward pass, which a 4-layer model cannot do for long
chains. Every chain has the same length and ends in a digit, so there is no shortcut (the
only digit, the only head, the longest chain): System 1, answering directly, falls towards
chance (1 / NUM_CHAINS) as the level rises, while System 2, writing the chain out, does not.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LEVELS = (1, 2, 3, 4, 5)
NUM_CHAINS = 4
VARIABLES = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
REFLECTION = "Wait, let me double check: "


@dataclass(frozen=True)
class Item:
    """One question. `chain` is the query chain: head variable, ..., last variable, digit."""

    question: str
    answer: str
    level: int
    chain: tuple[str, ...]

    def to_record(self) -> dict[str, object]:
        """The benchmark layout (one JSONL line of <data_dir>/lab/test.jsonl)."""
        return {"question": self.question, "answer": self.answer, "level": self.level}


def make_item(rng: random.Random, level: int) -> Item:
    """A question whose query chain has `level` hops, among NUM_CHAINS - 1 distractor chains
    of the same length, each ending in its own digit."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    names = rng.sample(VARIABLES, NUM_CHAINS * level)
    digits = rng.sample(DIGITS, NUM_CHAINS)
    chains = [tuple(names[c * level : (c + 1) * level]) + (digits[c],) for c in range(NUM_CHAINS)]
    assignments = [f"{ch[i]}={ch[i + 1]}" for ch in chains for i in range(level)]
    rng.shuffle(assignments)
    query = chains[0]
    question = f"{','.join(assignments)}. What is {query[0]}?"
    return Item(question=question, answer=query[-1], level=level, chain=query)


def make_items(n: int, seed: int, levels: tuple[int, ...] = LEVELS) -> list[Item]:
    """`n` items with levels cycling through `levels`, deterministic in `seed`."""
    rng = random.Random(seed)
    return [make_item(rng, levels[i % len(levels)]) for i in range(n)]


def steps(item: Item) -> str:
    """The chain written out one hop at a time: `q=u, u=w, w=7`."""
    ch = item.chain
    return ", ".join(f"{ch[i]}={ch[i + 1]}" for i in range(len(ch) - 1))


def assignments(item: Item) -> list[str]:
    """The question's assignments, in question order."""
    return item.question.split(". What is ")[0].split(",")


def lookup_drill(item: Item, rng: random.Random) -> str:
    """Pretraining text for System 1: the question's assignments, then each of them again in
    a fresh order, `a=b, k=3, ...`. Predicting each right-hand side is one lookup."""
    again = assignments(item)
    rng.shuffle(again)
    return ",".join(assignments(item)) + "\n" + ", ".join(again)


def short_answer(item: Item) -> str:
    """System 1's response: the value at once, no working."""
    return f"{item.chain[0]}={item.answer}.\n\\boxed{{{item.answer}}}"


def long_answer(item: Item) -> str:
    """System 2's response: the chain step by step, then a redundant reflection that walks
    the same chain again, then the boxed answer."""
    head, value = item.chain[0], item.answer
    return (
        f"{steps(item)}. So {head}={value}.\n"
        f"{REFLECTION}{steps(item)}. Yes, {head}={value}.\n"
        f"\\boxed{{{value}}}"
    )
