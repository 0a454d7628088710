"""The lab pair's char-level tokenizer, saved as a transformers PreTrainedTokenizerFast.

One token per printable ASCII character (plus newline), and the three Qwen specials. Tokens
are spelled in the byte-level alphabet of GPT-2/Qwen (space is "Ġ", newline "Ċ") with a
byte-level pre-tokenizer and decoder: transformers loads a `qwen2` model's tokenizer as
`Qwen2Tokenizer`, which rebuilds that byte-level pipeline around the saved vocabulary, so the
saved tokenizer must encode the same way under it. The chat
template renders the Qwen ChatML layout *without* the system message: the evaluator sends the
study's CoT system prompt, and the tiny models would spend most of their context on it, so the
template drops it. A response token is one character, so "mean tokens" is mean characters.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))
PAD, EOS = "<|endoftext|>", "<|im_end|>"

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
    # BPE with no merges = one token per character; unknown characters map to <|endoftext|>.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
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
