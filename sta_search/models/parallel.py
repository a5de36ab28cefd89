"""Sliding Tile Attention inside diffusers' Ulysses context parallelism.

With ``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`` (diffusers 0.42)
each of the N ranks holds ``1/N`` of the token sequence. Around every attention op diffusers'
``TemplatedUlyssesAttention`` runs an all-to-all that turns "all heads, a slice of the tokens" into
"all tokens, a slice of the heads", calls the attention op, and turns the output back. The hooked
processors (`wan.py`) run that same autograd function with our attention function as the op, so STA sees
the whole video canvas (its windows need every key tile) for ``heads / N`` heads. Rank ``r`` of the
Ulysses group receives heads ``r * heads / N .. (r + 1) * heads / N - 1`` (the all-to-all sends head chunk
``j`` to rank ``j``), so its calls carry ``head_offset = r * heads / N`` and per-head tables are sliced with
:func:`windows_for_call`.

Only Ulysses is supported: ring attention would hand STA a slice of the keys, which the windows cannot
be applied to without a mask per key block.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .base import AttentionCall


def windows_for_call(table, call: AttentionCall):
    """The rows of a per-head table (e.g. a layer's ``(heads, 3)`` STA windows) for the heads of `call`.

    ``table[call.head_offset : call.head_offset + call.local_heads]``: without context parallelism the
    whole table, under Ulysses the rows of this rank's global head indices. A ``(3,)`` table (one window
    for all heads) is returned unchanged. Works for numpy arrays and torch tensors.

    Raises UserError when the table's head count is not the layer's head count (a mask config made for
    another model).
    """
    if table is None or len(getattr(table, "shape", ())) < 2:
        return table
    total = int(call.total_heads)
    if int(table.shape[0]) != total:
        raise UserError(f"the window table has {int(table.shape[0])} heads but layer {call.layer} of the model has "
                        f"{total} attention heads; this mask config was made for another model")
    if call.head_offset == 0 and call.local_heads == total:
        return table
    return table[call.head_offset: call.head_offset + call.local_heads]


def ulysses_degree(parallel_config) -> int:
    """The Ulysses degree of a diffusers ``ParallelConfig`` (1 without context parallelism)."""
    cp = getattr(parallel_config, "context_parallel_config", None)
    return 1 if cp is None else int(cp.ulysses_degree)


def check_context_parallel(parallel_config, heads: int) -> None:
    """UserError unless `parallel_config` is pure Ulysses with a degree that divides `heads`."""
    cp = parallel_config.context_parallel_config
    if int(cp.ring_degree) != 1:
        raise UserError(f"ring attention (ring_degree={cp.ring_degree}) cannot run Sliding Tile Attention: "
                        "use ContextParallelConfig(ulysses_degree=N) only")
    if getattr(cp, "ulysses_anything", False):
        raise UserError("ulysses_anything=True is not supported with Sliding Tile Attention; the Ulysses degree "
                        "must divide the head count and the token count")
    if heads % int(cp.ulysses_degree):
        raise UserError(f"Ulysses degree {cp.ulysses_degree} does not divide the {heads} attention heads")


def _no_backward(*_args, **_kwargs):
    raise RuntimeError("Sliding Tile Attention under context parallelism is inference only (no backward)")


@torch.compiler.disable
def ulysses_attention(runtime, layer: int, query, key, value, parallel_config, text_len: int = 0,
                      text_mask=None) -> torch.Tensor:
    """Attention of one hooked layer under diffusers' Ulysses context parallelism.

    `query`, `key`, `value`: ``(batch, local tokens, heads, head_dim)`` (diffusers' dispatch layout) of
    this rank's sequence slice. Runs ``TemplatedUlyssesAttention`` (all-to-all to the full sequence and
    ``heads / degree`` heads, the op, all-to-all back) with ``runtime.attend`` as the op, passing the
    rank's global head offset. Returns ``(batch, local tokens, heads, head_dim)``.
    """
    from diffusers.models.attention_dispatch import TemplatedUlyssesAttention

    heads = int(query.shape[2])
    check_context_parallel(parallel_config, heads)
    cp = parallel_config.context_parallel_config
    local_heads = heads // int(cp.ulysses_degree)
    head_offset = int(cp._ulysses_local_rank) * local_heads

    def forward_op(ctx, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                   _save_ctx=True, _parallel_config=None):
        # q, k, v: (batch, all tokens, local heads, head_dim)
        out = runtime.attend(layer, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), text_len=text_len,
                             text_mask=text_mask, head_offset=head_offset, total_heads=heads)
        return out.transpose(1, 2)

    return TemplatedUlyssesAttention.apply(query, key, value, None, 0.0, False, None, False, False, forward_op,
                                           _no_backward, parallel_config)
