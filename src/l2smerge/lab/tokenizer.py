"""The lab pair's tokenizer, saved as a transformers PreTrainedTokenizerFast.

One token per printable ASCII character (plus newline), the three Qwen specials, and one
token per `=x` piece (`=` followed by a letter), the right-hand side of an assignment. With
`=x` a single token, looking up `u` in `...,u=w,...` is what an induction head does (find the
earlier `u`, copy the token after it), a circuit a 4-layer model forms in a few hundred steps;
spelled as two characters it needed a harder two-token match, which never formed in our
budgets (docs/lab.md).

transformers loads a `qwen2` model folder's tokenizer as `Qwen2Tokenizer`, which rebuilds the
Qwen pipeline (NFC, Qwen's pre-tokenizer regex, byte-level) around the saved vocabulary and
merges; this tokenizer is built with that very pipeline, so it encodes the same under either
class (and under vLLM). The regex keeps `=x` inside one piece, so its merge always applies.
Tokens are spelled in the byte-level alphabet (space is "Ġ", newline "Ċ"). The chat template
renders the Qwen ChatML layout *without* the system message: the evaluator sends the study's
CoT system prompt, and the tiny models would spend most of their context on it.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# The very pattern Qwen2Tokenizer rebuilds around a qwen2 folder (see module docstring).
from transformers.models.qwen2.tokenization_qwen2 import (
    PRETOKENIZE_REGEX as QWEN_PRETOKENIZE_REGEX,
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))
PAD, EOS = "<|endoftext|>", "<|im_end|>"
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

# ChatML without the system turn (see module docstring).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    byte_char = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab[byte_char[ord(ch)]] = len(vocab)
    merges = []
    for letter in LETTERS:  # "=x" pieces: one token each
        vocab["=" + letter] = len(vocab)
        merges.append(("=", letter))
    # Unknown characters map to <|endoftext|>.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=PAD))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=PAD,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level alphabet)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    printable = [b for b in range(256) if chr(b) in alphabet]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
