"""Word-level tokenizer for the `small` model's grammar (the text encoder is tiny's `TinyTextEncoder`).

Same scheme as `sta_search.tiny.text` (specials ``[PAD]``, ``[UNK]``, then the grammar's tokens; lower
case; words and punctuation split), over this grammar's vocabulary and a longer `MAX_LENGTH` (captions
name two or three objects, the floor, the camera and the light: up to ~40 tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sta_search.tiny.text import PAD_TOKEN, UNK_TOKEN, word_ids

from .data import vocabulary

MAX_LENGTH = 48


def vocab_map() -> dict[str, int]:
    """Token -> id: the two specials, then the grammar's tokens in a fixed order."""
    return {tok: i for i, tok in enumerate([PAD_TOKEN, UNK_TOKEN, *vocabulary()])}


def encode_words(texts: list[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Ids ``(len(texts), max_length)`` exactly as the saved tokenizer gives them (pad right, truncate)."""
    return word_ids(vocab_map(), texts, max_length)


def save_tokenizer(folder: str | Path, max_length: int = MAX_LENGTH) -> None:
    """Write a `PreTrainedTokenizerFast` over this vocabulary (needs transformers + tokenizers)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel(vocab=vocab_map(), unk_token=UNK_TOKEN))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN,
                            model_max_length=max_length, padding_side="right").save_pretrained(str(folder))
