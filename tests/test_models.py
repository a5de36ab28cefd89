"""Model adapters and the attention hook on tiny offline Wan / Wan 2.2 / HunyuanVideo / CogVideoX pipelines."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tiny_pipes
from sta_search.errors import UserError
from sta_search.models import (
    AttentionCall,
    dense_attention,
    get_adapter,
    hook_attention,
    load_model,
    register_bundled,
    supported_transformer_classes,
)

KINDS = ("wan", "wan22", "hunyuan_video", "cogvideox")
CANVAS = (3, 4, 4)  # 64 x 64 pixels, 9 frames: latent (3, 8, 8), patch (1, 2, 2)
TEXT_LEN = {"wan": 0, "wan22": 0, "hunyuan_video": 32, "cogvideox": tiny_pipes.TINY_COGVIDEOX_TEXT_LEN}
FORWARDS_PER_STEP = {"wan": 2, "wan22": 2, "hunyuan_video": 1, "cogvideox": 1}  # CogVideoX batches CFG


@pytest.fixture(scope="module")
def pipes():
    return {kind: tiny_pipes.tiny_pipeline(kind) for kind in KINDS}


def run_latents(pipe, kind, seed, **overrides):
    generator = torch.Generator("cpu").manual_seed(seed)
    kwargs = tiny_pipes.tiny_call_kwargs(kind, generator=generator, output_type="latent", **overrides)
    with torch.no_grad():
        return pipe(**kwargs).frames


def processors(pipe):
    return {
        name: proc
        for transformer in (pipe.transformer, getattr(pipe, "transformer_2", None))
        if transformer is not None
        for name, proc in transformer.attn_processors.items()
    }


def recording(calls, inner=dense_attention):
    def attention_fn(call: AttentionCall):
        calls.append(call)
        return inner(call)

    return attention_fn


@pytest.mark.parametrize("kind", KINDS)
def test_hooked_dense_equals_unhooked(pipes, kind, seed):
    pipe = pipes[kind]
    # <= 1e-5 hooked vs unhooked; dense + 0.1 moves the output by > 1e-3 (the hook really replaces the op)
    tiny_pipes.hooked_dense_run(pipe, lambda: run_latents(pipe, kind, seed))


@pytest.mark.parametrize("kind", KINDS)
def test_hook_sees_canvas_text_steps_layers(pipes, kind, seed):
    pipe = pipes[kind]
    adapter = get_adapter(pipe.transformer).bind(pipe)
    info = adapter.info(pipe.transformer, getattr(pipe, "transformer_2", None))
    assert adapter.canvas(pipe.transformer, 64, 64, 9) == CANVAS
    calls: list[AttentionCall] = []
    steps = 3
    with hook_attention(pipe, recording(calls)) as state:
        run_latents(pipe, kind, seed, num_inference_steps=steps)
    assert state.num_layers == info.num_layers
    assert state.step == steps - 1

    heads, video = info.num_heads, math.prod(CANVAS)
    for call in calls:
        assert call.canvas == CANVAS
        assert call.text_len == TEXT_LEN[kind]
        assert call.text_first == (kind == "cogvideox")
        assert call.q.shape[1:] == (heads, video + call.text_len, info.head_dim)
        assert call.q.shape == call.k.shape == call.v.shape
    # every step runs FORWARDS_PER_STEP forwards, each over one expert's layers in order
    per_layers = 2 if kind != "wan22" else 4
    assert info.num_layers == per_layers
    layers_per_forward = 2
    assert len(calls) == steps * FORWARDS_PER_STEP[kind] * layers_per_forward
    seen = [(c.step, c.forward_index, c.layer) for c in calls]
    experts = set()
    for i, (step, forward, layer) in enumerate(seen):
        block = i // layers_per_forward
        assert step == block // FORWARDS_PER_STEP[kind]
        assert forward == block % FORWARDS_PER_STEP[kind]
        expert = layer // layers_per_forward
        assert layer % layers_per_forward == i % layers_per_forward
        experts.add((step, expert))
    if kind == "wan22":  # high-noise expert first, then transformer_2 (layers 2, 3) after the boundary
        assert {e for _, e in experts} == {0, 1}
        assert all(e == 0 or s > 0 for s, e in experts)
    else:
        assert {e for _, e in experts} == {0}

    if kind == "hunyuan_video":
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

        _, expected = pipe._get_llama_prompt_embeds(
            tiny_pipes.tiny_call_kwargs(kind)["prompt"], DEFAULT_PROMPT_TEMPLATE, max_sequence_length=32,
            device="cpu",
        )
        for call in calls:
            assert call.text_mask is not None and call.text_mask.dtype == torch.bool
            assert torch.equal(call.text_mask, expected.bool())
        assert 0 < int(expected.sum()) < 32  # real padding in the tiny setup
    else:
        assert all(call.text_mask is None for call in calls)


def test_hook_restarts_steps_on_a_new_pipeline_call(pipes, seed):
    pipe = pipes["hunyuan_video"]
    calls: list[AttentionCall] = []
    with hook_attention(pipe, recording(calls)) as state:
        run_latents(pipe, "hunyuan_video", seed)
        run_latents(pipe, "hunyuan_video", seed)
    steps = [c.step for c in calls if c.layer == 0]
    assert steps == [0, 1, 0, 1]
    assert state.forwards == 4


@pytest.mark.parametrize("kind", KINDS)
def test_processors_and_hooks_restored(pipes, kind, seed):
    pipe = pipes[kind]
    before = processors(pipe)
    transformers = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]
    with hook_attention(pipe, dense_attention):
        during = processors(pipe)
        changed = {name for name in before if during[name] is not before[name]}
        assert all(t._forward_pre_hooks for t in transformers)
    # only self-attention is swapped: never Wan's cross-attention or HunyuanVideo's token refiner
    expected = {
        "wan": {f"blocks.{i}.attn1.processor" for i in range(2)},
        "hunyuan_video": {"transformer_blocks.0.attn.processor", "single_transformer_blocks.0.attn.processor"},
        "cogvideox": {f"transformer_blocks.{i}.attn1.processor" for i in range(2)},
    }.get(kind, {f"blocks.{i}.attn1.processor" for i in range(2)})
    assert changed == expected
    after = processors(pipe)
    assert all(after[name] is before[name] for name in before)
    assert not any(t._forward_pre_hooks for t in transformers)

    class Boom(RuntimeError):
        pass

    def failing(call):
        raise Boom("attention failed")

    with pytest.raises(Boom):
        with hook_attention(pipe, failing):
            run_latents(pipe, kind, seed)
    after = processors(pipe)
    assert all(after[name] is before[name] for name in before)
    assert not any(t._forward_pre_hooks for t in transformers)


@pytest.mark.parametrize("kind", ("wan", "hunyuan_video", "cogvideox"))
@pytest.mark.parametrize("backend", ("reference", "flex"))
def test_sta_full_window_through_hook_equals_dense(pipes, kind, backend, seed):
    from sta_search.kernels.sta.api import sta_attention

    pipe = pipes[kind]
    tile = (1, 4, 4)

    def sta(window):
        def attention_fn(call):
            return sta_attention(
                call.q, call.k, call.v, canvas=call.canvas, tile=tile, windows=window, text_len=call.text_len,
                text_first=call.text_first, text_mask=call.text_mask, backend=backend,
            )

        return attention_fn

    reference = run_latents(pipe, kind, seed)
    with hook_attention(pipe, sta((3, 1, 1))):  # grid (3, 1, 1): full attention
        full = run_latents(pipe, kind, seed)
    # a different summation order than SDPA: fp32 rounding, relative to latents of magnitude ~5
    torch.testing.assert_close(full, reference, atol=1e-5, rtol=1e-5)
    with hook_attention(pipe, sta((1, 1, 1))):  # one tile: a real sparse mask changes the output
        sparse = run_latents(pipe, kind, seed)
    assert (sparse - reference).abs().max().item() > 1e-4


def test_dense_attention_matches_explicit_softmax(seed):
    batch, heads, video, text, dim = 2, 3, 24, 5, 32
    q, k, v = (torch.randn(batch, heads, video + text, dim) for _ in range(3))
    text_mask = torch.rand(batch, text) > 0.4
    text_mask[:, 0] = True
    for text_first in (False, True):
        call = AttentionCall(step=0, layer=0, q=q, k=k, v=v, canvas=(1, 4, 6), text_len=text,
                             text_first=text_first, text_mask=text_mask, forward_index=0)
        valid = torch.ones(batch, video + text, dtype=torch.bool)
        if text_first:
            valid[:, :text] = text_mask
        else:
            valid[:, video:] = text_mask
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        expected = scores.softmax(-1) @ v
        assert torch.allclose(dense_attention(call), expected, atol=1e-5)


def test_check_finite_names_layer_and_step(seed):
    pipe = tiny_pipes.tiny_pipeline("wan")
    with torch.no_grad():
        pipe.transformer.blocks[1].attn1.to_k.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"non-finite attention input \(k\) at layer 1, step 0"):
        with hook_attention(pipe, dense_attention, check_finite=True):
            run_latents(pipe, "wan", seed)


def test_canvas_rules():
    pipes_ = {kind: tiny_pipes.tiny_pipeline(kind) for kind in ("wan", "hunyuan_video", "cogvideox")}
    wan = get_adapter(pipes_["wan"].transformer)
    assert wan.canvas(pipes_["wan"].transformer, 480, 832, 81) == (21, 30, 52)  # docs/geometry.md's Wan 480p example
    assert wan.canvas(pipes_["wan"].transformer, 64, 64, 10) == (3, 4, 4)  # WanPipeline rounds 10 -> 9 frames
    hunyuan = get_adapter(pipes_["hunyuan_video"].transformer)
    assert hunyuan.canvas(pipes_["hunyuan_video"].transformer, 768, 1280, 117) == (30, 48, 80)  # docs/geometry.md example
    cog = get_adapter(pipes_["cogvideox"].transformer)
    assert cog.canvas(pipes_["cogvideox"].transformer, 480, 720, 49) == (13, 30, 45)
    with pytest.raises(UserError, match="height 70"):
        wan.canvas(pipes_["wan"].transformer, 70, 64, 9)
    with pytest.raises(UserError, match="frames"):
        hunyuan.canvas(pipes_["hunyuan_video"].transformer, 64, 64, 0)
    # a pixel-space pipeline (VAE factors 1) binds its own factors
    class PixelPipeline:
        vae_scale_factor_temporal = 1
        vae_scale_factor_spatial = 1
        transformer = pipes_["wan"].transformer

    assert wan.canvas(pipes_["wan"].transformer, 16, 32, 5, pipeline=PixelPipeline()) == (5, 8, 16)


def test_cogvideox15_temporal_patch(seed):
    pipe = tiny_pipes.tiny_pipeline("cogvideox15")
    adapter = get_adapter(pipe.transformer).bind(pipe)
    assert adapter.info(pipe.transformer).patch_size == (2, 2, 2)
    for frames, canvas in ((9, (2, 4, 4)), (5, (1, 4, 4))):  # latent 3 -> padded to 4; latent 2
        assert adapter.canvas(pipe.transformer, 64, 64, frames) == canvas
        reference = run_latents(pipe, "cogvideox15", seed, num_frames=frames)
        calls: list[AttentionCall] = []
        with hook_attention(pipe, recording(calls)):
            hooked = run_latents(pipe, "cogvideox15", seed, num_frames=frames)
        assert {call.canvas for call in calls} == {canvas}
        assert (hooked - reference).abs().max().item() <= 1e-5


def test_pipeline_kwargs_run_the_pipeline(pipes, seed):
    for kind in ("wan", "cogvideox"):
        pipe = pipes[kind]
        adapter = get_adapter(pipe.transformer).bind(pipe)
        generator = torch.Generator("cpu").manual_seed(seed)
        kwargs = adapter.pipeline_kwargs("a cat", 64, 64, 9, 2, generator)
        assert kwargs["output_type"] == "np" and kwargs["num_frames"] == 9
        if kind == "cogvideox":
            assert kwargs["max_sequence_length"] == tiny_pipes.TINY_COGVIDEOX_TEXT_LEN
        with torch.no_grad():
            frames = pipe(**kwargs).frames
        assert frames.shape == (1, 9, 64, 64, 3)


def test_unsupported_transformer_class():
    class FluxTransformer2DModel(torch.nn.Module):
        pass

    with pytest.raises(UserError, match="unsupported transformer class 'FluxTransformer2DModel'") as info:
        get_adapter(FluxTransformer2DModel())
    for name in ("WanTransformer3DModel", "HunyuanVideoTransformer3DModel", "CogVideoXTransformer3DModel"):
        assert name in str(info.value)
        assert name in supported_transformer_classes()


@pytest.mark.parametrize("kind", KINDS)
def test_save_tiny_load_model_round_trip(pipes, kind, tmp_path, seed):
    folder = tiny_pipes.save_tiny(kind, tmp_path / kind)
    loaded = load_model(str(folder), "cpu", torch.float32)
    assert loaded.source == str(folder)
    assert type(loaded.transformer).__name__ == type(pipes[kind].transformer).__name__
    assert (loaded.transformer_2 is not None) == (kind == "wan22")
    assert loaded.info.num_layers == (4 if kind == "wan22" else 2)
    assert loaded.canvas(64, 64, 9) == CANVAS
    expected = run_latents(pipes[kind], kind, seed)
    with hook_attention(loaded, dense_attention) as state:
        got = run_latents(loaded.pipeline, kind, seed)
    assert state.num_layers == loaded.info.num_layers
    assert (got - expected).abs().max().item() <= 1e-5


def test_load_bare_transformer_and_bundled_name(pipes, tmp_path):
    pipes["hunyuan_video"].transformer.save_pretrained(tmp_path / "transformer")
    loaded = load_model(str(tmp_path / "transformer"), "cpu", torch.float32)
    assert loaded.pipeline is None and loaded.transformer_2 is None
    assert loaded.info == get_adapter(pipes["hunyuan_video"].transformer).info(pipes["hunyuan_video"].transformer)

    tiny_pipes.save_tiny("cogvideox", tmp_path / "cog")
    register_bundled("test-tiny-cogvideox", lambda: tmp_path / "cog")
    loaded = load_model("test-tiny-cogvideox", "cpu", torch.float32)
    assert loaded.source == "test-tiny-cogvideox"
    assert loaded.adapter.family == "cogvideox"


def test_load_model_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "missing"), "cpu", torch.float32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a diffusers folder"):
        load_model(str(tmp_path / "empty"), "cpu", torch.float32)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        load_model(str(tmp_path / "file.txt"), "cpu", torch.float32)

    flux = tmp_path / "flux"
    (flux / "transformer").mkdir(parents=True)
    (flux / "model_index.json").write_text(json.dumps(
        {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}))
    (flux / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(UserError, match="unsupported transformer class 'FluxTransformer2DModel'.*WanTransformer3DModel"):
        load_model(str(flux), "cpu", torch.float32)
    with pytest.raises(UserError, match="unsupported transformer class 'FluxTransformer2DModel'"):
        load_model(str(flux / "transformer"), "cpu", torch.float32)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        load_model(str(broken), "cpu", torch.float32)

    no_transformer = tmp_path / "sd"
    no_transformer.mkdir()
    (no_transformer / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(UserError, match="has no transformer"):
        load_model(str(no_transformer), "cpu", torch.float32)

    weightless = tmp_path / "weightless"
    (weightless / "transformer").mkdir(parents=True)
    config = dict(tiny_pipes.tiny_pipeline("wan").transformer.config, _class_name="WanTransformer3DModel")
    (weightless / "transformer" / "config.json").write_text(json.dumps(
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}))
    with pytest.raises(UserError, match="cannot load WanTransformer3DModel"):
        load_model(str(weightless / "transformer"), "cpu", torch.float32)

    with pytest.raises(UserError, match="device"):
        load_model(str(flux), "nodevice", torch.float32)


REAL_CONFIGS = [
    # (class, config of the released checkpoint, expected info fields, (height, width, frames), canvas)
    ("WanTransformer3DModel",  # Wan 2.1 T2V 1.3B
     dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096, freq_dim=256),
     (30, 12, 128, (1, 2, 2)), (480, 832, 81), (21, 30, 52)),
    ("HunyuanVideoTransformer3DModel",  # HunyuanVideo 13B
     dict(), (60, 24, 128, (1, 2, 2)), (768, 1280, 117), (30, 48, 80)),
    ("CogVideoXTransformer3DModel",  # CogVideoX-5b
     dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, use_rotary_positional_embeddings=True),
     (42, 48, 64, (1, 2, 2)), (480, 720, 49), (13, 30, 45)),
    ("CogVideoXTransformer3DModel",  # CogVideoX1.5-5B
     dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, use_rotary_positional_embeddings=True,
          patch_size_t=2, patch_bias=False, sample_height=96, sample_width=170, sample_frames=81),
     (42, 48, 64, (2, 2, 2)), (768, 1360, 81), (11, 48, 85)),
]


@pytest.mark.parametrize("class_name, config, expected, size, canvas", REAL_CONFIGS,
                         ids=["wan2.1-1.3b", "hunyuan-13b", "cogvideox-5b", "cogvideox1.5-5b"])
def test_real_architectures_on_meta_device(class_name, config, expected, size, canvas):
    import diffusers

    with torch.device("meta"):
        transformer = getattr(diffusers, class_name)(**config)
    adapter = get_adapter(transformer)
    info = adapter.info(transformer)
    assert (info.num_layers, info.num_heads, info.head_dim, info.patch_size) == expected
    assert adapter.canvas(transformer, *size) == canvas


def test_hook_through_torch_compile_wrapper(seed):
    pipe = tiny_pipes.tiny_pipeline("hunyuan_video")
    reference = run_latents(pipe, "hunyuan_video", seed)
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")  # dynamo tracing, no codegen
    assert get_adapter(pipe.transformer).family == "hunyuan_video"
    calls: list[AttentionCall] = []
    with hook_attention(pipe, recording(calls)):
        hooked = run_latents(pipe, "hunyuan_video", seed)
    assert [(c.step, c.layer) for c in calls] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert (hooked - reference).abs().max().item() <= 1e-5


def test_load_model_pixel_space_tiny_format(tmp_path, seed):
    """The bundled model's format (`TinyVideoPipeline`, VAE factors 1) loads and hooks like any pipeline."""
    tiny = pytest.importorskip("sta_search.tiny.pipeline")
    text = pytest.importorskip("sta_search.tiny.text")
    pipe = tiny.TinyVideoPipeline(
        tokenizer=text.build_tokenizer(),
        **tiny.build_components(dict(num_layers=2, num_attention_heads=2, ffn_dim=64), dict(num_layers=1)),
    )
    pipe.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), "cpu", torch.float32)
    assert (loaded.adapter.vae_scale_temporal, loaded.adapter.vae_scale_spatial) == (1, 1)
    patch = loaded.info.patch_size
    assert loaded.canvas(32, 32, 4) == (4 // patch[0], 32 // patch[1], 32 // patch[2])

    def call():
        generator = torch.Generator("cpu").manual_seed(seed)
        kwargs = loaded.adapter.pipeline_kwargs("a red circle", 32, 32, 4, 2, generator, output_type="latent")
        with torch.no_grad():
            return loaded.pipeline(**kwargs).frames

    reference = call()
    calls: list[AttentionCall] = []
    with hook_attention(loaded, recording(calls)):
        hooked = call()
    assert {c.canvas for c in calls} == {loaded.canvas(32, 32, 4)}
    assert len(calls) == 2 * 2 * 2  # steps x CFG forwards x layers
    assert (hooked - reference).abs().max().item() <= 1e-5
