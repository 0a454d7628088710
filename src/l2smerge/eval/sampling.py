"""How responses are drawn: greedy (the study's protocol, the default) or sampled, with a
temperature, a top-p, a seed and a number of samples per item.

Named settings (`--sampling NAME`):
- `greedy`: temperature 0, one response per item.
- `r1`: temperature 0.6, top-p 0.95, what DeepSeek recommends for its R1 and R1-Distill models
  ("Set the temperature within the range of 0.5-0.7 (0.6 is recommended)"; "For benchmarks
  requiring sampling, we use a temperature of 0.6, a top-p value of 0.95, and generate 64
  responses per query to estimate pass@1": the DeepSeek-R1-Distill-Qwen-7B model card,
  Usage Recommendations and Evaluation Results). The number of samples stays the user's
  choice (`--samples`), since 64 per item is a large bill.

Seeds: every sample of every item gets its own seed, derived from the run's seed, the item and
the sample index (`sample_seed`), so vLLM and an OpenAI-compatible server draw each sample the
same way however requests are batched or resumed. transformers has no per-row generator: the
hf backend seeds each batch from its requests (`batch_seed`), so a run is reproducible with the
same items, batch size and device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from l2smerge.util.errors import L2SError

GREEDY = "greedy"
SEED_MODULUS = 2**31  # seeds every backend accepts (OpenAI-compatible servers: 32-bit ints)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    samples: int = 1  # responses per item

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def protocol(self) -> str | dict[str, float]:
        """What a run's protocol records (eval/identity.py): "greedy", or the distribution
        sampled from. The seed and the number of samples are not protocol: two runs drawn with
        other seeds, or more samples, estimate the same accuracy."""
        if self.greedy:
            return GREEDY
        return {"temperature": self.temperature, "top_p": self.top_p}

    def record(self) -> str | dict[str, Any]:
        """The settings in full, for run.json's sessions and summary.json."""
        return GREEDY if self.greedy else asdict(self)

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        many = "sample" if self.samples == 1 else "samples"
        return (
            f"temperature {self.temperature:g}, top-p {self.top_p:g}, {self.samples} {many} "
            f"per item, seed {self.seed}"
        )

    def hf_options(self) -> dict[str, Any]:
        """transformers GenerationConfig fields. Every knob that changes the distribution is
        set, because transformers fills the unset ones from the model's generation_config.json
        (R1-Distill's asks for sampling at 0.6; Qwen2.5 instruct models for top-k 20 and a
        repetition penalty 1.05) and then from its own defaults (top-k 50): the result is
        vLLM's SamplingParams, which apply none of them."""
        neutral: dict[str, Any] = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
        if self.greedy:
            return {"do_sample": False, **neutral}
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "typical_p": 1.0,
            **neutral,
        }


PRESETS: dict[str, Sampling] = {
    GREEDY: Sampling(),
    "r1": Sampling(temperature=0.6, top_p=0.95),
}


def resolve_sampling(
    preset: str | Sampling | dict[str, Any] | None = None,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    samples: int | None = None,
) -> Sampling:
    """The settings of `preset` (a name of PRESETS, a Sampling, or a dict with `preset` and
    any of the fields) with the explicit values put over it; each bad value is an error
    naming its option."""
    if isinstance(preset, dict):
        unknown = sorted(set(preset) - {"preset", "temperature", "top_p", "seed", "samples"})
        if unknown:
            raise L2SError(
                f"sampling: unknown key {unknown[0]!r} (preset, temperature, top_p, seed, samples)"
            )
        given = {k: preset.get(k) for k in ("temperature", "top_p", "seed", "samples")}
        explicit = {"temperature": temperature, "top_p": top_p, "seed": seed, "samples": samples}
        merged = {k: explicit[k] if explicit[k] is not None else given[k] for k in explicit}
        return resolve_sampling(preset.get("preset"), **merged)
    if isinstance(preset, Sampling):
        base = preset
    else:
        name = preset or GREEDY
        if name not in PRESETS:
            raise L2SError(f"--sampling {name!r}: choose one of {', '.join(PRESETS)}")
        base = PRESETS[name]
    if temperature is not None and (not _is_number(temperature) or temperature < 0):
        raise L2SError(f"--temperature must be a number >= 0, got {temperature!r}")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise L2SError(f"--top-p must be in (0, 1], got {top_p!r}")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise L2SError(f"--seed must be an integer >= 0, got {seed!r}")
    if samples is not None and (not _is_int(samples) or samples < 1):
        raise L2SError(f"--samples must be an integer >= 1, got {samples!r}")
    settings = Sampling(
        temperature=float(base.temperature if temperature is None else temperature),
        top_p=float(base.top_p if top_p is None else top_p),
        seed=int(base.seed if seed is None else seed),
        samples=int(base.samples if samples is None else samples),
    )
    if settings.greedy:
        if settings.samples > 1:
            raise L2SError(
                f"--samples {settings.samples} with greedy decoding would repeat one response; "
                "sample with --temperature T (or --sampling r1)"
            )
        if settings.top_p != 1:
            raise L2SError("--top-p applies to sampling; give --temperature T > 0 with it")
    return settings


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sample_seed(seed: int, key: tuple[str, Any], sample: int) -> int:
    """The seed of one sample of one item: stable across runs, machines and batchings."""
    text = json.dumps([seed, key[0], str(key[1]), sample])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % SEED_MODULUS


def batch_seed(seed: int, units: Iterable[tuple[tuple[str, Any], int]]) -> int:
    """The seed of a batch of (item key, sample index): the same batch draws the same way."""
    text = json.dumps([seed, [[k[0], str(k[1]), s] for k, s in units]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % SEED_MODULUS


@contextlib.contextmanager
def seeded(
    sampling: Sampling, units: Iterable[tuple[tuple[str, Any], int]], device: str
) -> Iterator[None]:
    """torch's random state seeded for one batch of a sampled run (`batch_seed`), and put back
    afterwards, so no other use of torch's generator is disturbed; nothing for greedy."""
    if sampling.greedy:
        yield
        return
    import torch

    devices = [torch.device(device)] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(batch_seed(sampling.seed, units))
        yield
