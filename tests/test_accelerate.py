"""sta_search.accelerate: STA from a mask config on tiny real diffusers pipelines (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sta_search
from sta_search.accelerate import AttentionTimer, MaskAttention
from sta_search.errors import UserError
from sta_search.maskconfig import MaskConfig

from tiny_pipes import tiny_call_kwargs, tiny_pipeline

# 128 x 128 pixels, 9 frames -> latent (3, 16, 16) -> canvas (3, 8, 8) for every tiny family;
# tile (1, 4, 4) gives a (3, 2, 2) grid, so (1, 1, 1) windows are really sparse.
SIZE = dict(height=128, width=128, frames=9)
TILE = (1, 4, 4)
CANVAS = (3, 8, 8)
SPARSE = (1, 1, 1)
FULL = (3, 2, 2)


@pytest.fixture(scope="module")
def wan_pipe():
    return tiny_pipeline("wan")


def _config(pipe, window, steps=2, dense_steps=(), canvas=CANVAS, tile=TILE, text_len=0):
    from sta_search.models import get_adapter

    info = get_adapter(pipe.transformer).info(pipe.transformer, getattr(pipe, "transformer_2", None))
    return MaskConfig.uniform(info, canvas, tile, text_len, steps, window, dense_steps=dense_steps)


def _call(pipe, kind, seed=0, **overrides):
    settings = dict(height=SIZE["height"], width=SIZE["width"], num_frames=SIZE["frames"], num_inference_steps=2,
                    output_type="latent")
    settings.update(overrides)
    kwargs = tiny_call_kwargs(kind, generator=torch.Generator("cpu").manual_seed(seed), **settings)
    with torch.no_grad():
        return pipe(**kwargs).frames[0].float()


def _processors(transformer):
    return dict(transformer.attn_processors)


def test_processors_restored_after_block_and_after_error(wan_pipe):
    before = _processors(wan_pipe.transformer)
    config = _config(wan_pipe, SPARSE)
    with sta_search.accelerate(wan_pipe, config, backend="reference") as acc:
        assert _processors(wan_pipe.transformer) != before  # hooked inside
        _call(wan_pipe, "wan")
        assert acc.attention.calls["sparse"] > 0
    assert _processors(wan_pipe.transformer) == before

    with pytest.raises(RuntimeError, match="boom"):
        with sta_search.accelerate(wan_pipe, config, backend="reference"):
            raise RuntimeError("boom")
    assert _processors(wan_pipe.transformer) == before

    # an error inside the pipeline call (a step count the config does not cover) also restores them
    with pytest.raises(UserError, match="steps"):
        with sta_search.accelerate(wan_pipe, config, backend="reference"):
            _call(wan_pipe, "wan", num_inference_steps=3)
    assert _processors(wan_pipe.transformer) == before


@pytest.mark.parametrize("kind", ["wan", "hunyuan_video", "cogvideox"])
def test_full_windows_give_the_dense_output(kind, seed):
    pipe = tiny_pipeline(kind)
    text_len = 0
    dense = _call(pipe, kind, seed=seed)
    with sta_search.accelerate(pipe, _config(pipe, FULL, text_len=text_len), backend="reference") as acc:
        full = _call(pipe, kind, seed=seed)
    assert acc.attention.calls["sparse"] == 0 and acc.attention.calls["dense"] > 0
    assert (full - dense).abs().max().item() <= 1e-5

    # a really sparse window changes the video, and flex and the reference agree on it
    with sta_search.accelerate(pipe, _config(pipe, SPARSE), backend="reference") as acc:
        sparse_ref = _call(pipe, kind, seed=seed)
    assert acc.attention.calls["sparse"] > 0
    assert acc.attention.calls["kernel:reference"] == acc.attention.calls["sparse"]  # reported per kernel
    assert (sparse_ref - dense).abs().max().item() > 1e-4
    with sta_search.accelerate(pipe, _config(pipe, SPARSE), backend="flex"):
        sparse_flex = _call(pipe, kind, seed=seed)
    assert (sparse_flex - sparse_ref).abs().max().item() <= 1e-4


def test_dense_steps_and_full_layers_run_dense(wan_pipe):
    config = _config(wan_pipe, SPARSE, steps=4, dense_steps=(0, 2))
    attention = MaskAttention(config)
    plan0, plan1 = attention.plan(0), attention.plan(1)
    assert plan0 == [None] * config.num_layers
    assert all(t is not None and t.shape == (config.num_heads, 3) for t in plan1)
    windows = config.windows.copy()
    windows[1, 0] = (7, 9, 9)  # larger than the grid on every axis: full, clipped
    windows[1, 1, 0] = (9, 1, 1)
    attention = MaskAttention(config.replace(windows=windows))
    layer0, layer1 = attention.plan(1)
    assert layer0 is None
    assert layer1.tolist() == [[3, 1, 1], [1, 1, 1]]
    density = attention.density()
    assert density["per_step"][0] == 1.0 and density["per_step"][2] == 1.0
    assert 0 < density["per_step"][3] < 1


def test_bare_transformer_and_timer(wan_pipe):
    transformer = wan_pipe.transformer
    before = _processors(transformer)
    timer = AttentionTimer()
    with sta_search.accelerate(transformer, _config(wan_pipe, SPARSE), backend="reference", timer=timer) as acc:
        _call(wan_pipe, "wan")
    assert _processors(transformer) == before
    per_step = timer.seconds_per_step()
    assert sorted(per_step) == [0, 1] and all(v > 0 for v in per_step.values())
    assert timer.calls == acc.attention.calls["sparse"] + acc.attention.calls["dense"]


def test_mismatched_configs_are_refused_before_running(wan_pipe, tmp_path):
    before = _processors(wan_pipe.transformer)
    good = _config(wan_pipe, SPARSE)
    other_model = MaskConfig.uniform({**good.model, "num_layers": 5}, CANVAS, TILE, 0, 2, SPARSE)
    with pytest.raises(UserError, match="num_layers"):
        with sta_search.accelerate(wan_pipe, other_model):
            pass
    with pytest.raises(UserError, match="canvas"):
        with sta_search.accelerate(wan_pipe, good, height=64, width=64, frames=9):
            pass
    with pytest.raises(UserError, match="steps"):
        with sta_search.accelerate(wan_pipe, good, steps=3, **SIZE):
            pass
    # canvas checked at the first attention call when the sizes are not given up front
    with pytest.raises(UserError, match="canvas"):
        with sta_search.accelerate(wan_pipe, good, backend="reference"):
            with torch.no_grad():
                wan_pipe(**tiny_call_kwargs("wan", height=64, width=64, num_inference_steps=2))
    assert _processors(wan_pipe.transformer) == before
    # a path works as well as a MaskConfig; a missing file is a UserError
    good.save(tmp_path / "mask.yaml")
    with sta_search.accelerate(wan_pipe, str(tmp_path / "mask.yaml"), **SIZE, steps=2) as acc:
        assert acc.config == good
    with pytest.raises(UserError, match="does not exist|not found"):
        with sta_search.accelerate(wan_pipe, tmp_path / "missing.yaml"):
            pass


def _one_layer_case(canvas, tile, text_len, head_windows, padded_text, device="cpu"):
    """A one-step, one-layer hunyuan_video mask config with these per-head windows, a text mask whose last
    ``padded_text`` keys are padding, and ``call(q, k, v)`` wrapping tensors as that layer's attention call."""
    from sta_search.models import AttentionCall

    config = MaskConfig.uniform({"family": "hunyuan_video", "transformer_class": "X", "num_layers": 1,
                                 "num_heads": len(head_windows)}, canvas, tile, text_len, 1, head_windows[0])
    windows = config.windows.copy()
    windows[0, 0] = head_windows
    text_mask = torch.ones(1, text_len, dtype=torch.bool, device=device)
    text_mask[0, -padded_text:] = False

    def call(q, k, v):
        return AttentionCall(step=0, layer=0, q=q, k=k, v=v, canvas=canvas, text_len=text_len, text_first=False,
                             text_mask=text_mask, forward_index=0)

    return config.replace(windows=windows), int(np.prod(canvas)) + text_len, call


def test_triton_backend_through_mask_attention(seed):
    """The Triton kernel (interpreted on CPU) behind MaskAttention matches the reference, text included."""
    pytest.importorskip("sta_search.kernels.sta.triton_fwd")
    config, S, call = _one_layer_case((2, 8, 8), (1, 4, 4), 16, [(1, 1, 1), (2, 1, 2)], padded_text=5)
    q, k, v = (torch.randn(1, 2, S, 32) for _ in range(3))
    out_triton = MaskAttention(config, backend="triton")(call(q, k, v))
    out_ref = MaskAttention(config, backend="reference")(call(q, k, v))
    assert (out_triton - out_ref).abs().max().item() <= 2e-5


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["gluon", "triton"])
def test_cuda_backends_through_mask_attention(backend, seed):
    """Both CUDA kernels behind MaskAttention (bf16, d=128, per-head windows, masked text after the video)
    against the reference computed in fp32 on the same inputs."""
    if backend == "gluon" and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Gluon kernel needs a Hopper (sm_90) GPU")
    config, S, call = _one_layer_case((12, 16, 16), (6, 8, 8), 40, [(1, 2, 1), (2, 1, 2), (2, 2, 2)], padded_text=7,
                                      device="cuda")
    q, k, v = (torch.randn(1, 3, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = MaskAttention(config, backend=backend)(call(q, k, v)).float()
    ref = MaskAttention(config, backend="reference")(call(q.float(), k.float(), v.float()))
    assert torch.isfinite(out).all()
    assert ((out - ref).norm() / ref.norm()).item() < 1e-2, f"seed {seed}"


class LayerRecorder(AttentionTimer):
    """A timer that also remembers which (step, layer) pairs were attended."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def wrap(self, attention_fn):
        timed = super().wrap(attention_fn)

        def recording(call):
            self.seen.add((call.step, call.layer))
            return timed(call)

        return recording


def test_wan22_two_experts_are_both_accelerated():
    pipe = tiny_pipeline("wan22")
    before = (_processors(pipe.transformer), _processors(pipe.transformer_2))
    config = _config(pipe, SPARSE)
    assert config.num_layers == 2 * len(pipe.transformer.blocks) == 4
    recorder = LayerRecorder()
    with sta_search.accelerate(pipe, config, backend="reference", timer=recorder) as acc:
        _call(pipe, "wan22")
    assert acc.attention.calls["sparse"] > 0 and acc.attention.calls["dense"] == 0
    # boundary ratio 0.5 over 2 steps: step 0 on the first expert (layers 0-1), step 1 on the second (2-3)
    assert recorder.seen == {(0, 0), (0, 1), (1, 2), (1, 3)}
    assert (_processors(pipe.transformer), _processors(pipe.transformer_2)) == before


def test_head_chunks_give_the_same_output(seed):
    """Large inputs run a few heads at a time (bounded tile-order copies): same result as one call."""
    from sta_search.models import AttentionCall

    canvas, tile, text_len, heads, dim = (2, 8, 8), (1, 4, 4), 8, 3, 32
    info = {"family": "cogvideox", "transformer_class": "X", "num_layers": 1, "num_heads": heads}
    windows = np.array([[[1, 1, 1], [2, 1, 2], [1, 2, 1]]], np.int32)[None]
    config = MaskConfig(info, canvas, tile, text_len, 1, (), windows)
    S = int(np.prod(canvas)) + text_len
    q, k, v = (torch.randn(2, heads, S, dim) for _ in range(3))
    text_mask = torch.rand(2, text_len) > 0.3
    call = AttentionCall(step=0, layer=0, q=q, k=k, v=v, canvas=canvas, text_len=text_len, text_first=True,
                         text_mask=text_mask, forward_index=0)
    whole = MaskAttention(config, backend="reference", max_chunk_bytes=None)(call)
    per_head = MaskAttention(config, backend="reference", max_chunk_bytes=1)(call)
    torch.testing.assert_close(per_head, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("text_first", [False, True])
def test_fast_dense_attention_equals_diffusers_dense(text_first, seed):
    from sta_search.accelerate import fast_dense_attention
    from sta_search.models import AttentionCall, dense_attention

    canvas, text_len = (2, 4, 4), 8
    q, k, v = (torch.randn(2, 2, 32 + text_len, 32) for _ in range(3))
    for text_mask in (torch.ones(2, text_len, dtype=torch.bool), torch.rand(2, text_len) > 0.5, None):
        call = AttentionCall(step=0, layer=0, q=q, k=k, v=v, canvas=canvas, text_len=text_len,
                             text_first=text_first, text_mask=text_mask, forward_index=0)
        torch.testing.assert_close(fast_dense_attention(call), dense_attention(call), atol=1e-5, rtol=0)


def test_kernel_is_decided_once_per_input_signature_and_counted(monkeypatch):
    """MaskAttention resolves the backend once per (device, dtype, shape, strides), not on every call."""
    from sta_search.kernels import backends
    from sta_search.models.base import AttentionCall

    resolved = []
    real = backends.resolve
    monkeypatch.setattr(backends, "resolve", lambda *a, **k: resolved.append(a[0]) or real(*a, **k))
    info = {"family": "wan", "transformer_class": "X", "num_layers": 2, "num_heads": 2}
    windows = np.array([[[1, 1, 1], [2, 2, 1]], [[2, 1, 1], [1, 1, 1]]], np.int32)[None]
    config = MaskConfig(info, (2, 8, 8), (1, 4, 4), 0, 1, (), windows)
    attention = MaskAttention(config)
    q, k, v = (torch.randn(1, 2, 128, 32) for _ in range(3))
    outputs = [attention(AttentionCall(step=0, layer=layer, q=q, k=k, v=v, canvas=(2, 8, 8), text_len=0,
                                       text_first=False, text_mask=None, forward_index=0)) for layer in (0, 1, 0, 1)]
    assert resolved.count("auto") == 1 and attention.calls["kernel:gather"] == 4 == attention.calls["sparse"]
    reference = MaskAttention(config, backend="reference")
    expected = reference(AttentionCall(step=0, layer=0, q=q, k=k, v=v, canvas=(2, 8, 8), text_len=0,
                                       text_first=False, text_mask=None, forward_index=0))
    torch.testing.assert_close(outputs[0], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(outputs[0], outputs[1])
