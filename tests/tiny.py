"""Tiny Hugging Face checkpoints built inside the tests: real configs, real safetensors files,
a real (byte-level) tokenizer with a chat template. A few hundred KB each."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: 256 byte tokens + 3 specials, no merges. Encodes any text."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(
    arch: str = "qwen2",
    vocab_size: int = 272,
    hidden: int = 32,
    layers: int = 2,
    tie: bool = False,
    context: int = 512,
):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=tie,
        bos_token_id=None,
        eos_token_id=258,  # <|im_end|> in byte_tokenizer()
        pad_token_id=256,
    )
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"unknown arch {arch!r}")


def make_tiny_model(
    path: str | Path,
    *,
    arch: str = "qwen2",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    vocab_size: int = 272,
    hidden: int = 32,
    layers: int = 2,
    tie: bool = False,
    base: str | Path | None = None,
    noise: float = 0.02,
    max_shard_size: str | None = None,
    tokenizer: bool = True,
    context: int = 512,
) -> Path:
    """Save a random tiny model to `path`. With `base`, start from that model's weights and add
    Gaussian noise of std `noise` (a stand-in for a fine-tuned child of the base). `context`:
    max_position_embeddings (the byte tokenizer makes benchmark prompts ~500-1500 tokens)."""
    path = Path(path)
    torch.manual_seed(seed)
    if base is not None:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * noise)
    else:
        config = tiny_config(arch, vocab_size, hidden, layers, tie, context)
        model = AutoModelForCausalLM.from_config(config)
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    if tokenizer:
        byte_tokenizer().save_pretrained(path)
    return path


def make_planned_length_model(
    path: str | Path, plan: dict[str, int], *, hidden: int = 256, layers: int = 4, seed: int = 0
) -> Path:
    """A Qwen2-shaped model (byte tokenizer) whose greedy response to a prompt ending in one of
    `plan`'s characters is exactly that many tokens, then `<|im_end|>`. Attention and MLP
    outputs are zero, so the residual stream is the last token's embedding and the output
    head maps it to its successor along one chain of tokens that ends in eos; each planned
    character enters the chain as many tokens before its end as it plans. The layers still
    run at full cost: a stand-in for a model whose responses differ in length."""
    path = Path(path)
    tokenizer = byte_tokenizer()
    starts = {tokenizer.convert_tokens_to_ids(tokenizer.tokenize(c))[0]: n for c, n in plan.items()}
    # chain tokens: letters, digits and lone non-ASCII bytes (no stop string can form)
    pool = [
        i
        for i in range(256)
        if i not in starts
        and (tokenizer.decode([i]).isalnum() or tokenizer.decode([i]) == "\ufffd")
    ]
    length = max(plan.values())
    if length > len(pool):
        raise ValueError(f"at most {len(pool)} tokens per response, planned {length}")
    chain = pool[:length] + [258]  # <|im_end|>
    successor = {a: b for a, b in zip(chain[:-1], chain[1:], strict=True)}
    successor.update({s: chain[length - n] for s, n in starts.items()})
    torch.manual_seed(seed)
    config = tiny_config("qwen2", hidden=hidden, layers=layers, context=4096)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        unit = embed / embed.norm(dim=1, keepdim=True)
        head = torch.zeros_like(model.lm_head.weight)
        for token, following in successor.items():
            head[following] += unit[token]
        model.lm_head.weight.copy_(head)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
