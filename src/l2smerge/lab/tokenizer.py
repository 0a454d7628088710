"""The lab pair's char-level tokenizer, saved as a transformers PreTrainedTokenizerFast.

One token per printable ASCII character (plus newline), and the three Qwen specials. The chat
template renders the Qwen ChatML layout *without* the system message: the evaluator sends the
study's CoT system prompt, and the tiny models would spend most of their context on it, so the
template drops it. A response token is one character, so "mean tokens" is mean characters.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models
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
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    # BPE with no merges = one token per character; unknown characters map to <|endoftext|>.
    model = models.BPE(vocab=vocab, merges=[], unk_token=PAD)
    tok = Tokenizer(model)
    tok.decoder = decoders.Fuse()
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
