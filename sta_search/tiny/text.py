"""Word-level tokenizer and a small transformer text encoder for the bundled tiny model.

The tokenizer is a standard `transformers.PreTrainedTokenizerFast` over a `tokenizers` WordLevel model
(lower-cased, whitespace/punctuation split), so the pipeline folder loads with the usual
``from_pretrained``. `encode_words` gives the same ids without transformers (training runs with it).
The encoder is a diffusers `ModelMixin`, saved and loaded like any diffusers model.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .data import vocabulary

PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
MAX_LENGTH = 16


def vocab_map() -> dict[str, int]:
    """Token -> id: the two specials, then the grammar's words in a fixed order."""
    return {tok: i for i, tok in enumerate([PAD_TOKEN, UNK_TOKEN, *vocabulary()])}


def encode_words(texts: list[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Ids ``(len(texts), max_length)`` exactly as the saved tokenizer gives them (pad right, truncate)."""
    return word_ids(vocab_map(), texts, max_length)


def word_ids(vocab: dict[str, int], texts: list[str], max_length: int) -> torch.Tensor:
    """Ids ``(len(texts), max_length)`` of lower-cased words and punctuation under ``vocab`` (unknown -> UNK,
    pad right, truncate): the encoding of every bundled model's word-level tokenizer."""
    rows = []
    for text in texts:
        ids = [vocab.get(w, UNK_ID) for w in re.findall(r"\w+|[^\w\s]", text.lower())][:max_length]
        rows.append(ids + [PAD_ID] * (max_length - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def build_tokenizer(max_length: int = MAX_LENGTH):
    """A `PreTrainedTokenizerFast` over the grammar's vocabulary (needs transformers + tokenizers)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel(vocab=vocab_map(), unk_token=UNK_TOKEN))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=max_length,
        padding_side="right",
    )


def save_tokenizer(folder: str | Path, max_length: int = MAX_LENGTH) -> None:
    build_tokenizer(max_length).save_pretrained(str(folder))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


class TinyTextEncoder(ModelMixin, ConfigMixin):
    """Token embedding + learned positions + pre-norm transformer blocks.

    ``forward(input_ids, attention_mask=None) -> (batch, length, dim)``; outputs at padding positions
    are zero (like WanPipeline, which zero-pads its T5 embeddings past each prompt's length), so the
    empty prompt encodes to all zeros.
    """

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 32,
        dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        max_length: int = MAX_LENGTH,
        pad_token_id: int = PAD_ID,
    ):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, dim))
        self.blocks = nn.ModuleList(_Block(dim, num_heads) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_token_id
        attention_mask = attention_mask.bool()
        # An all-padding row (the empty prompt) would attend to nothing; let it see position 0, then zero it.
        key_mask = attention_mask.clone()
        key_mask[:, 0] |= ~attention_mask.any(dim=1)
        x = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[1]]
        for block in self.blocks:
            x = block(x, key_mask)
        return self.final_norm(x) * attention_mask[..., None].to(x.dtype)
