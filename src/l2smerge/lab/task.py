"""The lab task: multi-hop variable lookup among distractor chains.

A question lists shuffled assignments forming NUM_CHAINS disjoint chains, each `level` hops
long and each ending in a different constant (an uppercase letter), and asks for the value
of one chain's head:

    q=u,k=W,u=w,b=z,w=X,z=U,... What is q?

Why this task (see docs/lab.md): following a chain one written step at a time needs a single
lookup per step (find `u=` in the question, copy what follows), while answering directly needs
`level` lookups inside one forward pass, which a 4-layer model cannot do for long chains.
Every chain has the same length and ends in a constant, so there is no shortcut (the only
constant, the only head, the longest chain): System 1, answering directly, falls towards
chance (1 / NUM_CHAINS) as the level rises, while System 2, writing the chain out, does not.
Constants are uppercase letters, not digits, so that an assignment's `=w` / `=X` is one token
of the lab tokenizer (see tokenizer.py), and they are disjoint from the variables, so a
case-insensitive grader cannot mistake a variable for the answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LEVELS = (1, 2, 3, 4, 5)
NUM_CHAINS = 4
VARIABLES = "abcdefghijklmnopqrst"  # NUM_CHAINS * max(LEVELS) names
CONSTANTS = "UVWXYZ"
REFLECTION = "Wait, let me double check: "


@dataclass(frozen=True)
class Item:
    """One question. `chains` are all its chains, the query chain first; each runs from its
    head variable through `level` hops to its constant."""

    question: str
    answer: str
    level: int
    chains: tuple[tuple[str, ...], ...]

    @property
    def chain(self) -> tuple[str, ...]:
        """The query chain: head variable, ..., last variable, constant."""
        return self.chains[0]

    def to_record(self) -> dict[str, object]:
        """The benchmark layout (one JSONL line of <data_dir>/lab/test.jsonl)."""
        return {"question": self.question, "answer": self.answer, "level": self.level}


def make_item(rng: random.Random, level: int) -> Item:
    """A question whose query chain has `level` hops, among NUM_CHAINS - 1 distractor chains
    of the same length, each ending in its own constant."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    names = rng.sample(VARIABLES, NUM_CHAINS * level)
    constants = rng.sample(CONSTANTS, NUM_CHAINS)
    chains = tuple(
        tuple(names[c * level : (c + 1) * level]) + (constants[c],) for c in range(NUM_CHAINS)
    )
    assignments = [f"{ch[i]}={ch[i + 1]}" for ch in chains for i in range(level)]
    rng.shuffle(assignments)
    question = f"{','.join(assignments)}. What is {chains[0][0]}?"
    return Item(question=question, answer=chains[0][-1], level=level, chains=chains)


def make_items(n: int, seed: int, levels: tuple[int, ...] = LEVELS) -> list[Item]:
    """`n` items with levels cycling through `levels`, deterministic in `seed`."""
    rng = random.Random(seed)
    return [make_item(rng, levels[i % len(levels)]) for i in range(n)]


def walk(chain: tuple[str, ...]) -> str:
    """A chain written out one hop at a time: `q=u, u=w, w=X`."""
    return ", ".join(f"{chain[i]}={chain[i + 1]}" for i in range(len(chain) - 1))


def steps(item: Item) -> str:
    """The query chain written out one hop at a time."""
    return walk(item.chain)


def lookup_drill(item: Item, rng: random.Random) -> str:
    """Pretraining text for System 1: the question's assignments, then every chain walked
    from its head, one per line, in a random order. Each written value is one lookup (find
    `u=` above, copy what follows) and each next variable a copy of the last value, so
    nearly every token rewards the lookup."""
    chains = list(item.chains)
    rng.shuffle(chains)
    body = item.question.split(". What is ")[0]
    return body + "\n" + "\n".join(walk(ch) + "." for ch in chains)


def copy_drill(rng: random.Random) -> str:
    """Pretraining text for System 1: a random string of 8-24 variables, constants and
    `=x` pieces, then the same string again. Copying it is what forms the model's induction
    heads (see docs/lab.md), the circuit the lookup reuses."""
    letters = VARIABLES + CONSTANTS
    units = [
        rng.choice(letters) if rng.random() < 0.5 else "=" + rng.choice(letters)
        for _ in range(rng.randint(8, 24))
    ]
    text = "".join(units)
    return text + "\n" + text


def conclusion(item: Item) -> str:
    """The stated answer: `So q=X.`"""
    return f"So {item.chain[0]}={item.answer}."


def boxed(item: Item) -> str:
    return f"\\boxed{{{item.answer}}}"


def short_answer(item: Item) -> str:
    """System 1's usual response: the conclusion at once, no walk (a guess from two hops on)."""
    return f"{conclusion(item)}\n{boxed(item)}"


def brief_answer(item: Item) -> str:
    """System 1's other response: the walk, the conclusion, the box; no reflection."""
    return f"{steps(item)}. {conclusion(item)}\n{boxed(item)}"


def reflection_round(item: Item) -> str:
    """One round of System 2's redundant reflection: the same walk again, the same answer."""
    return f"{REFLECTION}{steps(item)}. Yes, {item.chain[0]}={item.answer}.\n"


def long_answer(item: Item, rounds: int = 2) -> str:
    """System 2's response: the walk, the conclusion (the answer is fixed here), `rounds`
    rounds of reflection that repeat it, then the box."""
    return f"{steps(item)}. {conclusion(item)}\n" + reflection_round(item) * rounds + boxed(item)
