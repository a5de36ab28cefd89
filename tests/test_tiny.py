"""The bundled tiny model: offline loading, pipeline outputs, tokenizer, data generator, caption checker."""

import io
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from sta_search.errors import UserError
from sta_search.tiny import bundled_path, is_tiny_folder, load_tiny, recommended_settings
from sta_search.tiny import data
from sta_search.tiny.evaluate import check_video, score
from sta_search.tiny.text import PAD_ID, UNK_ID, encode_words, vocab_map

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipe():
    return load_tiny("cpu", torch.float32)


def test_bundled_folder_is_complete_and_small():
    folder = bundled_path()
    assert is_tiny_folder(folder)
    for part in ("transformer", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir(), part
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total <= 20 * 2**20


def test_recommended_settings_give_a_real_sta_canvas(pipe):
    s = recommended_settings()
    p_t, p_h, p_w = pipe.transformer.config.patch_size
    canvas = (s.frames // p_t, s.height // p_h, s.width // p_w)
    grid = [math.ceil(c / t) for c, t in zip(canvas, s.tile)]
    assert math.prod(canvas) >= 2048
    assert sum(g >= 4 for g in grid) >= 2
    assert math.prod(s.tile) % 16 == 0


def test_load_model_by_name_uses_the_wan_adapter():
    from sta_search.models import load_model

    from sta_search.models import bundled_names, model_defaults

    assert "tiny" in bundled_names()  # the static table of models/loading.py; tiny registers nothing itself
    assert model_defaults("tiny")["tile"] == list(recommended_settings().tile)
    loaded = load_model("tiny", "cpu", torch.float32)
    assert type(loaded.pipeline).__name__ == "TinyVideoPipeline" and loaded.source == "tiny"
    info = loaded.adapter.info(loaded.transformer)
    assert info.family == "wan" and info.transformer_class == "WanTransformer3DModel"
    s = recommended_settings()
    assert loaded.adapter.canvas(loaded.transformer, s.height, s.width, s.frames) == (8, 16, 16)


def test_pipeline_frames_shape_range_and_cfg_forwards(pipe, seed):
    forwards = []
    handle = pipe.transformer.register_forward_hook(lambda m, a, k: forwards.append(1))
    steps = []
    try:
        out = pipe(["a big red circle moves left over a blue floor", "a small white ring grows over a gray floor"],
                   height=32, width=48, num_frames=4, num_inference_steps=2, guidance_scale=4.0,
                   generator=torch.Generator().manual_seed(seed),
                   callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {})
    finally:
        handle.remove()
    frames = out.frames
    assert frames.shape == (2, 4, 32, 48, 3) and frames.dtype == np.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0 and frames.std() > 0.01
    assert len(forwards) == 4 and steps == [0, 1]  # two forwards per step under guidance

    pt = pipe("a big red circle moves left over a blue floor", height=32, width=32, num_frames=4,
              num_inference_steps=1, guidance_scale=1.0, output_type="pt",
              generator=torch.Generator().manual_seed(seed)).frames
    assert pt.shape == (1, 4, 3, 32, 32)


def test_pipeline_is_deterministic_in_the_generator(pipe, seed):
    kw = dict(height=32, width=32, num_frames=4, num_inference_steps=2, guidance_scale=3.0)
    a = pipe("a big green square moves up over a black floor", generator=torch.Generator().manual_seed(seed), **kw)
    b = pipe("a big green square moves up over a black floor", generator=torch.Generator().manual_seed(seed), **kw)
    c = pipe("a big green square moves up over a black floor", generator=torch.Generator().manual_seed(seed + 1), **kw)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


def test_pipeline_rejects_sizes_off_the_patch_grid(pipe):
    with pytest.raises(ValueError, match="multiples"):
        pipe("a big red circle moves left over a blue floor", height=30, width=32, num_frames=4, num_inference_steps=1)


def test_saved_tokenizer_matches_training_ids(pipe, seed):
    rng = random.Random(seed)
    words = list(vocab_map())[2:] + ["zebra", "Moves", "LEFT", ","]
    texts = data.prompt_set(6, seed) + [" ".join(rng.choices(words, k=rng.randint(0, 20))) for _ in range(10)] + [""]
    ids = pipe.tokenizer(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, encode_words(texts, 16))
    assert encode_words(["zebra"])[0, 0] == UNK_ID and encode_words([""])[0].eq(PAD_ID).all()


def test_empty_prompt_encodes_to_zeros(pipe):
    embeds, negative = pipe.encode_prompt(["a big red circle moves left over a blue floor"], None, True, device="cpu")
    assert negative.abs().max() == 0 and embeds.abs().max() > 0


def test_data_is_deterministic_in_the_seed(seed):
    kw = dict(frames=4, height=32, width=32)
    a, ca = data.sample_batch(6, generator=torch.Generator().manual_seed(seed), **kw)
    b, cb = data.sample_batch(6, generator=torch.Generator().manual_seed(seed), **kw)
    c, cc = data.sample_batch(6, generator=torch.Generator().manual_seed(seed + 1), **kw)
    assert torch.equal(a, b) and ca == cb
    assert not torch.equal(a, c)
    assert a.shape == (6, 3, 4, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert data.prompt_set(5, seed) == data.prompt_set(5, seed)


def test_captions_follow_the_grammar(seed):
    scenes = data.sample_scenes(200, torch.Generator().manual_seed(seed))
    for scene in scenes:
        assert data.parse_caption(scene.caption) == scene
        assert data.FLOOR_COLORS[scene.floor] != data.COLORS[scene.color]
        assert set(scene.caption.split()) <= set(data.vocabulary())
    with pytest.raises(ValueError):
        data.parse_caption("a big red circle moves sideways over a blue floor")


def test_checker_passes_rendered_videos_and_fails_wrong_captions(seed):
    g = torch.Generator().manual_seed(seed)
    scenes = data.sample_scenes(24, g)
    videos = data.render(scenes, frames=8, height=64, width=64, generator=g)
    frames = ((videos.permute(0, 2, 3, 4, 1) + 1) / 2).numpy()
    captions = [s.caption for s in scenes]
    assert score(frames, captions)["all"] >= 0.95
    # the same videos under captions with another object colour, floor or motion fail those checks
    from dataclasses import replace

    for field, count in (("color", len(data.COLORS)), ("floor", len(data.FLOOR_COLORS)), ("motion", len(data.MOTIONS))):
        wrong = []
        for s in scenes:
            w = replace(s, **{field: (getattr(s, field) + 1 + seed % (count - 1)) % count})
            pair = {data.MOTIONS[s.motion], data.MOTIONS[w.motion]}
            if field == "motion" and "bounces" in pair and pair & {"moves up", "moves down"}:
                # the checker takes any mostly vertical travel for a bounce (8 frames may show half of one)
                w = replace(w, motion=data.MOTIONS.index("grows"))
            wrong.append(w.caption if data.FLOOR_COLORS[w.floor] != data.COLORS[w.color] else s.caption)
        changed = [i for i, (a, b) in enumerate(zip(captions, wrong)) if a != b]
        fails = [not getattr(check_video(frames[i], wrong[i]), field) for i in changed]
        assert sum(fails) >= 0.7 * len(changed), field


def test_train_script_smoke(tmp_path):
    out = tmp_path / "train"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_tiny.py"), "--smoke", "--steps", "3", "--batch", "2",
         "--out", str(out), "--sample-steps", "2", "--folder", str(tmp_path / "folder"), "--temporal-loss", "0.5"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] == 3 and all(math.isfinite(e["loss"]) for e in log["loss"])
    assert (out / "tiny_transformer.tar").stat().st_size > 0 and list(out.glob("samples_*.png"))
    folder = tmp_path / "folder"  # the unpacked pipeline folder, loadable as is (tokenizer copied if need be)
    assert (folder / "model_index.json").is_file() and (folder / "tokenizer").is_dir()
    assert (folder / "transformer" / "config.json").is_file() and log["warmup"] == 200


def test_demo_shortened_writes_report_mask_videos_and_heatmaps(tmp_path):
    """A CI-sized demo: 1 profiled prompt, 1 held-out prompt, 2 steps, 32x32 pixels (canvas (8, 8, 8)); the
    full demo is 4 + 2 prompts, 8 steps, 64x64."""
    from sta_search.maskconfig import MaskConfig
    from sta_search.demo import DemoSettings, demo_prompts, run_demo

    quick, heldout = demo_prompts(4, 2)
    assert not set(quick) & set(heldout) and len(set(quick)) == 4
    out = tmp_path / "demo"
    folder = str(bundled_path())  # --model takes a folder too (with its sta_search.json); tile comes from there
    log = io.StringIO()  # not a terminal: the profile stage still reports every prompt in plain lines
    report = run_demo(DemoSettings(out=str(out), budget=0.3, quick_prompts=1, heldout_prompts=1, steps=2,
                                   height=32, width=32, full_steps=0, profile_every=2, error_windows=((1, 4, 4), (2, 2, 2)),
                                   model=folder, threads=1, calibrate_steps=True), console=Console(file=log, width=200))
    assert "prompt 1/1 done in" in log.getvalue()
    # --calibrate-steps: one profiled step (0), probed by both sparse steps; its weight is its gain over itself
    assert report["selection"]["step_weights"] == [1.0] and report["timings"]["calibrate_s"] > 0
    assert (out / "profile" / "step_sensitivity.json").is_file()
    assert report["model"] == folder and report["threads"]["threads"] == 1
    measured = report["measured"]
    assert measured["sta_kernels"] == ["gather"] and measured["threads"] == 1  # auto off CUDA
    assert measured["attention_sparse_steps"]["speedup"] > 0 and measured["step_sparse_steps"]["speedup"] > 0
    markdown = (out / "report.md").read_text()
    calibrated = report["prediction"]["calibrated_on"]
    assert calibrated and f"calibrated on {calibrated}" in markdown  # named, and its number left out on CPU:
    assert f"{report['prediction']['attention_speedup']:.2f}x" not in markdown.split("## Speed measured")[0]
    assert "`gather`" in markdown and "1 (--threads)" in markdown and "- step weights (profiled steps'" in markdown
    written = json.loads((out / "report.json").read_text())
    assert (out / "report.md").is_file() and written["steps"] == 2
    assert written["tool_version"] and written["versions"]["torch"] == torch.__version__  # sta_search.report
    config = MaskConfig.load(out / "mask.yaml")
    assert config.canvas == (8, 8, 8) and config.tile == (2, 4, 4) and config.steps == 2
    assert 0 < config.density() <= 0.3 + 1e-6
    video = report["videos"][0]
    for key in ("video", "dense_video", "side_by_side"):
        assert (out / video[key]).stat().st_size > 0
    assert video["fidelity"]["psnr_db"] is not None
    assert report["heatmaps"] and all((out / p).is_file() for p in report["heatmaps"])
    assert (out / report["frames_png"]).stat().st_size > 0


def test_demo_markdown_labels_the_prediction_with_its_gpu_on_cuda():
    from sta_search.demo import _markdown

    report = {"model": "tiny", "device": "cuda", "steps": 8, "canvas": [8, 16, 16], "tile": [2, 4, 4], "budget": 0.3,
              "selection": {"density": 0.3, "overall_density": 0.47, "predicted_error": 0.1, "heldout_error": 0.1,
                            "dense_step_count": 2},
              "prediction": {"attention_speedup": 1.6, "calibrated_on": "NVIDIA H100 80GB HBM3"},
              "measured": {}, "videos": [], "heatmaps": [], "mask": "mask.yaml", "timings": {}}
    markdown = _markdown(report)
    assert "predicted attention speedup on NVIDIA H100 80GB HBM3" in markdown and "1.60x" in markdown
    assert "No dense comparison ran" in markdown


@pytest.mark.parametrize("model", ["medium", "/no/such/folder"])
def test_demo_unknown_model_is_a_user_error(model, tmp_path):
    from sta_search.demo import DemoSettings, run_demo

    with pytest.raises(UserError, match="does not exist"):
        run_demo(DemoSettings(out=str(tmp_path / "demo"), model=model))
