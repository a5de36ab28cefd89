"""Train the bundled `small` video model (sta_search/small) with flow matching; time-boxed and resumable.

    python bench/train_small.py --out OUT [--time-budget 540] [--resume CKPT] [--pack] [--eval-prompts 32]
    python bench/train_small.py --smoke --steps 2 --out /tmp/s     # CPU check in seconds

Fresh procedural videos + captions (`sta_search.small.data`, held-out captions excluded) are rendered on
the device every step. The transformer (diffusers `WanTransformer3DModel`, RGB pixels, patch 1x4x4,
9.1 M parameters: 8 layers, 4 heads x 64, FFN 1024) and tiny's word-level text encoder (dim 192, 2
layers) are trained jointly with the rectified-flow objective of `FlowMatchEulerDiscreteScheduler`
(x_s = (1 - s) x0 + s noise, target noise - x0, timestep 1000 s, logit-normal s with shift 3 or
``--train-shift``), bf16
autocast on CUDA, AdamW, EMA 0.999. Multi-resolution: each step uses one canvas of ``--canvases``
(default 16x96x160 px, batch 12 -> token canvas 16x24x40; and 8x64x96 px, batch 64 -> 8x16x24);
a fraction ``--large-fraction`` of the steps (deterministic in the step index) uses the first one.

``--reversal-pairs``: half of every batch is the other half played backwards, captioned by
`sta_search.small.data.reversed_scene` (left <-> right, grows <-> shrinks, pans and zooms swapped), so the same
pixels come in both time orders with opposite words (session 11 found the model symmetric under time reversal,
which is why it cannot learn motion direction or size change). After evaluation ``train_log.json`` also gets
``direction_diagnostics``: how far the EMA model is from commuting with a frame reversal (and a mirror and a shuffle,
for scale), how far its text encoder keeps the direction words apart, and how much its loss rises under the opposite
motion word, the other axis and the reversed size change at noise 0.8 and 0.95 (``caption_loss_gap``, 4 held-out
scenes; zero when the words are ignored) (bench/small_caption_loss.py, bench/small_caption_probe.py).

``--contrast W`` (session 12; run 7 in session 13 trained with 0.5 and came out worse on every held-out attribute,
``bench/results/small_train/run7/README.md``): on ``--contrast-fraction`` of each batch the denoiser also runs
under the caption of the same video played backwards (``data.reversed_scene``: left <-> right, grows <-> shrinks), and
``W x relu((1 + margin) err_true - err_reversed) / err_true`` is added to the loss: zero once the error under the
wrong words is clearly higher, which the model can only reach by reading them (``bench/small_binding_probe.py``
found that it does not read the motion word at all; the reversal pairs of run 6 gave no such signal).
``--contrast-grad true`` (session 13, not yet trained with) stops the gradient through the wrong caption's error, so
the hinge only pushes the true caption's error down.

``--coordinates`` (session 16): the transformer takes 3 more input channels holding each pixel's frame, row and
column in [-1, 1] (`sta_search.tiny.pipeline.coordinate_channels`, appended by the pipeline as Wan's image-to-video
pipelines append their condition channels; still a stock `WanTransformer3DModel`). Resuming a checkpoint without
them widens its patch embedding with zero weights, so training starts from the same function. The direction toy
(bench/direction_toy.py) learns a captioned direction with absolute positions and not with RoPE alone.

``--ease accel`` (session 20): the training clips get an arrow of time (every motion, size change, pan, zoom and
light change starts from rest and speeds up; `sta_search.small.data.EASES`), with which the direction toy's Wan reads
the captioned direction through cross-attention alone. ``--reseparate-words`` gives chosen words fresh token
embeddings first (run 4's encoder had merged "left" and "right"). Runs 17-18 (``bench/results/small_train/run17/``):
the reversal symmetry breaks, the motion word is still not read after 2,355 steps from run 4.

``--max-objects 1``, ``--plain-scenes`` and ``--freeze-text-encoder`` (session 21; a resume keeps all three): one
object per scene; an untextured floor, a still camera and a steady light; the text encoder left at its initialisation
(fresh: random, like the frozen umT5 of a real Wan). `bench/direction_ladder_job.sh` trains rungs between the
direction toy's setting and small's own in parallel. From scratch on accel data (runs 19-21,
``bench/results/small_train/run19/``) the motion word is not read after 3,357 steps, nor with one object per scene
after 1,268, while the jointly trained encoder merges the motion words. With the encoder frozen (session 22, one
object on a plain floor, 2,581 steps, ``bench/results/small_train/ladder22/``) the size words and the motion axis are
read, the sign not yet.

``--no-pooled-text`` (session 18, hunyuan_video only): the input weights of HunyuanVideo's pooled-text projection are
zeroed and frozen, so the caption reaches the video only through joint attention (the direction toy's "pooled text
zero" variant, 1.00). The model stays a stock `HunyuanVideoTransformer3DModel` whose output no longer depends on its
``pooled_projections``: every caller runs it unchanged, and a resume keeps the cut (the weights are exactly zero).
Why: at step 2,919 the HunyuanVideo `small` read its captions mostly through the pooled mean, a bag of words that
cannot bind an attribute to an object (`bench/small_text_paths.py`).

Time box: ``--time-budget`` seconds from start, minus ``--reserve`` for saving, samples and evaluation.
After ``calibrate`` steps the run's step count is fixed from the measured step time. The learning rate
warms up linearly (``--warmup`` steps, 300 fresh / 100 on resume) and then stays constant, so a run can
be continued any number of times; ``--decay`` instead anneals it (cosine to 10 %) over this run's
steps, for a final run.

Checkpoint (``OUT/checkpoint/``, or with ``--pack`` tars ``OUT/checkpoint-NN.tar`` < 15 MiB each, for
machines that return at most 8 files of 16 MiB): a loadable pipeline folder (``load_small(folder=...)``)
with the EMA weights in bf16 (transformer 18 MB in 2 shards), plus ``train_state/``: the raw weights in
fp32 (sharded, < 15 MB per file) and ``state.json`` (global step, samples seen, the data generator's
state, seeds, learning rate and schedule, earlier runs). The optimizer state (2 x 37 MB) is NOT kept:
on ``--resume`` AdamW restarts and the learning rate warms up again over ``--warmup`` steps; the
weights, EMA, step count, data stream and schedule continue. Everything the GPU machine returns then
is: the tars (~60 MB together), ``samples.png`` (one row per held-out prompt, one column per frame, at
the large canvas) and ``train_log.json`` (loss curve per canvas, steps, seconds, device, resolutions,
evaluator scores on ``--eval-prompts`` held-out captions at every canvas).

Step-time estimate on an H200 (from FLOP counts; not measured): per video token and layer the linear
layers cost 2 x (6 d^2 + 2 d f) = 1.84 MFLOP (d = 256, f = 1024; cross-attention keys over 48 text
tokens are negligible) and self-attention 4 S d FLOP: 15.7 MFLOP at S = 15,360 (large canvas),
3.1 MFLOP at S = 3,072 (small). Forward per video: 15,360 x 8 x 17.6 M = 2.2 TFLOP (large),
3,072 x 8 x 4.9 M = 0.12 TFLOP (small); training ~3x forward. Large step (batch 12): 78 TFLOP, at an
assumed 250 TFLOP/s effective (flash attention fwd+bwd, bf16) ~0.3 s; small step (batch 64): 23 TFLOP,
narrow d = 256 matmuls and elementwise work, assume ~150 TFLOP/s -> ~0.15 s. With 30 % large steps
~0.2 s per step on average: a 10-minute lease (~500 s of training after start-up, save and evaluation)
gives ~2,500 steps, ~125 k videos. Measured numbers land in train_log.json (``step_seconds``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import math
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

START = time.time()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from safetensors.torch import load_file, save_file  # noqa: E402
from train_tiny import video_grid, write_png  # noqa: E402

from sta_search.options import parse_numbers  # noqa: E402
from sta_search.small import PIPELINE_CLASS, SETTINGS_FILE, data, evaluate  # noqa: E402
from sta_search.small.pipeline import (FAMILIES, SmallVideoPipeline, build_components,  # noqa: E402
                                       build_scheduler)
from sta_search.small.text import MAX_LENGTH, encode_words, save_tokenizer, vocab_map  # noqa: E402
from sta_search.tiny.pipeline import denoise, is_joint_attention  # noqa: E402
from sta_search.tiny.text import TinyTextEncoder  # noqa: E402

SHARD_BYTES = 15_000_000
SETTINGS = {"tile": [4, 4, 4], "height": 96, "width": 160, "frames": 16, "steps": 16, "guidance_scale": 4.0}
EVAL_SEED = 777


SDPA_CHOICES = ("default", "cudnn", "efficient", "flash")


def sdpa_context(name: str):
    """A context that restricts torch's SDPA to one backend (``default``: torch's own choice)."""
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([{"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                         "flash": SDPBackend.FLASH_ATTENTION}[name]])


def probe_step_costs(forward, text_encoder, canvases, autocast, device, reps: int = 3) -> dict:
    """Milliseconds per batch of each canvas for drawing the data and for one forward + backward under each SDPA
    backend (median of ``reps`` after a warm-up; gradients are discarded), or why a backend refused."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t0) * 1000)
        return round(sorted(times)[len(times) // 2], 1)

    gen = torch.Generator().manual_seed(12345)
    found = {}
    for f, h, w, batch in canvases:
        entry = {"data_ms": timed(lambda: data.sample_batch(batch, frames=f, height=h, width=w, generator=gen,
                                                             device=device))}
        videos, captions = data.sample_batch(batch, frames=f, height=h, width=w, generator=gen, device=device)
        ids = encode_words(captions, MAX_LENGTH).to(device)
        sigma = torch.full((batch,), 0.5, device=device)

        def fwd_bwd():
            with autocast:
                pred = forward(hidden_states=videos, timestep=sigma * 1000, encoder_hidden_states=text_encoder(ids))[0]
            pred.float().square().mean().backward()

        for name in SDPA_CHOICES:
            try:
                with sdpa_context(name):
                    entry[f"{name}_ms"] = timed(fwd_bwd)
            except RuntimeError as err:
                entry[f"{name}_ms"] = f"refused: {str(err).splitlines()[0][:160]}"
        found["x".join(map(str, (f, h, w))) + f":{batch}"] = entry
    return found


def pick_sdpa(costs: dict) -> str:
    """The backend with the least summed forward + backward time over the probed canvases."""
    totals = {name: sum(c[f"{name}_ms"] for c in costs.values()) for name in SDPA_CHOICES
              if all(isinstance(c[f"{name}_ms"], float) for c in costs.values())}
    return min(totals, key=totals.get)


def pooled_text_weight(transformer) -> torch.Tensor:
    """The input weights of a HunyuanVideo transformer's pooled-text projection."""
    return transformer.time_text_embed.text_embedder.linear_1.weight


def cut_pooled_text(transformer) -> None:
    """Zero and freeze `pooled_text_weight`: the output no longer depends on ``pooled_projections``."""
    weight = pooled_text_weight(transformer)
    with torch.no_grad():
        weight.zero_()
    weight.requires_grad_(False)


def parse_canvases(text: str) -> list[tuple[int, int, int, int]]:
    """``"16x96x160:12,8x64x96:64"`` -> [(frames, height, width, batch), ...] (first = large canvas)."""
    out = []
    for item in text.split(","):
        size, _, batch = item.partition(":")
        f, h, w = data.parse_pixel_canvas(size)
        out.append((f, h, w, int(batch or 8)))
    return out


# ----------------------------------------------------------------------------------------- checkpoint
def save_sharded(tensors: dict[str, torch.Tensor], folder: Path, stem: str) -> None:
    """Safetensors files of at most `SHARD_BYTES` each: ``stem-00.safetensors``, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    shard, size, index = {}, 0, 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > SHARD_BYTES:
            save_file(shard, str(folder / f"{stem}-{index:02d}.safetensors"))
            shard, size, index = {}, 0, index + 1
        shard[name] = tensor.detach().contiguous().cpu()
        size += nbytes
    save_file(shard, str(folder / f"{stem}-{index:02d}.safetensors"))


def load_sharded(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob(f"{stem}-*.safetensors")):
        out.update(load_file(str(path)))
    return out


def mean_gaps(gaps: dict) -> dict:
    """``{sigma: {comparison: [relative loss increases]}}`` -> ``{"sigma": {comparison: mean}}`` (JSON-ready)."""
    return {str(sigma): {name: round(sum(v) / len(v), 6) for name, v in found.items()} for sigma, found in gaps.items()}


def write_checkpoint(folder: Path, components: dict, ema: list, state: dict, settings: dict,
                     raw_state: bool = True) -> None:
    """Pipeline folder (EMA weights, bf16) + train_state/ (raw fp32 weights unless not ``raw_state``, and
    state.json), atomically."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, model in (("transformer", ema[0]), ("text_encoder", ema[1])):
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp / name, safe_serialization=True,
                                                                max_shard_size="15MB")
    components["scheduler"].save_pretrained(tmp / "scheduler")
    import diffusers

    index = {
        "_class_name": PIPELINE_CLASS,
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["sta_search.tiny.text", "TinyTextEncoder"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", type(ema[0]).__name__],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    try:
        save_tokenizer(tmp / "tokenizer")
    except ImportError:
        print("transformers/tokenizers missing: tokenizer/ not written (load_small needs it)", flush=True)
    if raw_state:
        raw = {f"transformer.{k}": v.float() for k, v in components["transformer"].state_dict().items()}
        raw.update({f"text_encoder.{k}": v.float() for k, v in components["text_encoder"].state_dict().items()})
        save_sharded(raw, tmp / "train_state", "weights")
    else:
        (tmp / "train_state").mkdir()
    (tmp / "train_state" / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def pack(folder: Path, out: Path, limit: int = 15 * 2**20) -> list[str]:
    """Tar `folder` into ``out/checkpoint-NN.tar`` files of at most `limit` bytes (whole files each)."""
    for old in out.glob("checkpoint-*.tar"):
        old.unlink()
    groups: list[list[Path]] = []
    sizes: list[int] = []
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: (-p.stat().st_size, str(p)))
    for path in files:  # first fit, largest first
        nbytes = path.stat().st_size + 1536
        slot = next((i for i, used in enumerate(sizes) if used + nbytes <= limit), None)
        if slot is None:
            groups.append([])
            sizes.append(0)
            slot = len(groups) - 1
        groups[slot].append(path)
        sizes[slot] += nbytes
    names = []
    for i, paths in enumerate(groups):
        name = f"checkpoint-{i:02d}.tar"
        with tarfile.open(out / name, "w") as tar:
            for path in paths:
                tar.add(path, arcname=str(Path("checkpoint") / path.relative_to(folder)))
        names.append(name)
    return names


def resolve_resume(path: Path, scratch: Path) -> Path:
    """A checkpoint folder, or a folder holding checkpoint-*.tar (unpacked into `scratch`)."""
    if (path / "train_state" / "state.json").is_file():
        return path
    if (path / "checkpoint" / "train_state" / "state.json").is_file():
        return path / "checkpoint"
    tars = sorted(path.glob("checkpoint-*.tar"))
    if not tars:
        raise SystemExit(f"--resume {path}: no checkpoint folder (train_state/state.json) or checkpoint-*.tar")
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            tar.extractall(scratch, filter="data")
    return scratch / "checkpoint"


def add_coordinate_inputs(transformer) -> None:
    """Widen ``transformer``'s patch embedding by 3 input channels (`coordinate_channels`) with zero weights, so it
    computes the same function until trained; its config records the new ``in_channels``."""
    conv = transformer.patch_embedding
    wider = torch.nn.Conv3d(conv.in_channels + 3, conv.out_channels, conv.kernel_size, conv.stride,
                            device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        wider.weight.zero_()
        wider.weight[:, :conv.in_channels] = conv.weight
        wider.bias.copy_(conv.bias)
    transformer.patch_embedding = wider
    transformer.register_to_config(in_channels=conv.in_channels + 3)


def load_checkpoint(folder: Path):
    """(components with raw weights, EMA models in fp32, state dict) from a checkpoint folder."""
    import diffusers

    state = json.loads((folder / "train_state" / "state.json").read_text())
    if not (folder / "transformer" / "config.json").is_file():  # the committed state: its EMA weights are the bundled model's
        from sta_search.small import bundled_path

        print(f"{folder} holds the training state only: EMA weights from {bundled_path()}", flush=True)
        folder = bundled_path()
    components = {"scheduler": build_scheduler()}
    transformer_config = json.loads((folder / "transformer" / "config.json").read_text())
    transformer_class = getattr(diffusers, transformer_config["_class_name"])
    components["transformer"] = transformer_class.from_config(transformer_config)
    components["text_encoder"] = TinyTextEncoder.from_config(TinyTextEncoder.load_config(str(folder / "text_encoder")))
    ema = [transformer_class.from_pretrained(str(folder / "transformer"), dtype=torch.float32),
           TinyTextEncoder.from_pretrained(str(folder / "text_encoder"), dtype=torch.float32)]
    raw = load_sharded(folder / "train_state", "weights")
    if not raw:  # a committed checkpoint keeps only the EMA pipeline (bf16): the raw weights restart from it
        print("train_state/ has no raw weights: continuing from the EMA weights", flush=True)
        state.setdefault("notes", []).append(f"raw weights restarted from the EMA weights at step {state.get('step')}")
        raw = {f"{name}.{k}": v.float() for name, model in (("transformer", ema[0]), ("text_encoder", ema[1]))
               for k, v in model.state_dict().items()}
    for name in ("transformer", "text_encoder"):
        prefix = name + "."
        components[name].load_state_dict({k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)})
    return components, ema, state


# ---------------------------------------------------------------------------------------- evaluation
def bundled_components(device, folder=None) -> dict:
    """The bundled `small` pipeline's (or the small-format ``folder``'s, e.g. a checkpoint) components (no
    tokenizer: `generate` encodes words itself), transformer and text encoder in float32 on ``device``: what the
    bench scripts that study the model run."""
    from sta_search.small import load_small

    components = {k: v for k, v in load_small(folder).components.items() if k != "tokenizer"}
    for module in (components["transformer"], components["text_encoder"]):
        module.float().to(device).eval()
    return components


def probe_setup(doc: str, scenes: int, argv=None):
    """What the CPU probes of the bundled model share (bench/small_caption_probe.py, small_binding_probe.py): their
    arguments (``--scenes``, ``--steps``, ``--guidance``, ``--device``, ``--out``, ``--folder``, ``--max-objects``),
    the bundled (or ``--folder``'s) components and the held-out evaluation scenes. Returns ``(args, components, scenes)``."""
    import argparse

    from sta_search.small import data

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=scenes)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--folder", type=Path, default=None,
                        help="a small-format pipeline folder (e.g. a train_small checkpoint; default: the bundled one)")
    parser.add_argument("--max-objects", type=int, default=3, choices=data.MAX_OBJECTS,
                        help="objects per held-out scene, at most (1 for a model trained with --max-objects 1)")
    args = parser.parse_args(argv)
    held_out = [data.parse_caption(c) for c in data.prompt_set(args.scenes, EVAL_SEED, args.max_objects)]
    return args, bundled_components(args.device, args.folder), held_out


@torch.no_grad()
def generate(components: dict, prompts: list[str], canvas, steps: int, guidance: float, seed: int, batch: int = 8):
    pipe = SmallVideoPipeline(tokenizer=None, **components)
    pipe.set_progress_bar_config(disable=True)
    f, h, w = canvas[:3]
    out = []
    for i in range(0, len(prompts), batch):
        g = torch.Generator(device=components["transformer"].device).manual_seed(seed + i)
        out.append(pipe(prompts[i: i + batch], height=h, width=w, num_frames=f, num_inference_steps=steps,
                        guidance_scale=guidance, generator=g, output_type="latent").frames.float().cpu())
    return torch.cat(out)


def scored(videos, prompts: list[str], t0: float, guidance: float, label: str) -> dict:
    """The evaluator's scores of generated ``videos`` against ``prompts``, with the seconds since ``t0`` and the
    guidance; printed as ``label: {...}`` without the per-object scores."""
    result = evaluate.score(evaluate.videos_to_frames(videos), prompts)
    result.update(seconds=round(time.time() - t0, 1), guidance=guidance)
    print(f"{label}: " + json.dumps({k: v for k, v in result.items() if not k.startswith("objects")}), flush=True)
    return result


RESUMED_SETTINGS = {"ease": "linear", "max_objects": 3, "plain_scenes": False, "freeze_text_encoder": False}
"""Options (by argparse name) a resume takes from the checkpoint's ``state.json`` config unless given, and their
defaults for a fresh run."""


def reseparate_words(encoders, words: list[str], seed: int) -> None:
    """Give each of ``words`` a fresh random token embedding, at the table's mean row norm, in every encoder of
    ``encoders`` (the trained one and its EMA get the same rows). For a trained encoder that has merged words its
    denoiser never read (run 4 kept "left" and "right" 5.7% apart at its output)."""
    vocab = vocab_map()
    unknown = [w for w in words if w not in vocab]
    if unknown:
        raise SystemExit(f"--reseparate-words: not in the caption vocabulary: {' '.join(unknown)}")
    table = encoders[0].token_embedding.weight
    rows = torch.randn(len(words), table.shape[1], generator=torch.Generator().manual_seed(seed))
    rows *= table.detach().norm(dim=1).mean() / rows.norm(dim=1, keepdim=True)
    with torch.no_grad():
        for encoder in encoders:
            encoder.token_embedding.weight[[vocab[w] for w in words]] = rows.to(encoder.token_embedding.weight)


def caption_contrast(forward, text_encoder, noisy, sigma, target, pred, captions, drop, args, autocast):
    """``--contrast``: mean over the first ``--contrast-fraction`` of the batch (captions kept, and changed by a
    reversal) of ``relu((1 + margin) * err_true - err_reversed) / err_true``, where ``err_*`` is a sample's
    flow-matching error with its caption and with the caption of the same video played backwards (left <-> right,
    grows <-> shrinks, ...). It is zero once the denoiser's error is clearly higher under the wrong words, which
    it can only reach by reading them. None when no sample qualifies."""
    from sta_search.small import data
    from sta_search.small.text import MAX_LENGTH, encode_words

    k = max(1, int(round(args.contrast_fraction * len(captions))))
    rows, wrong = [], []
    for i in range(min(k, len(captions))):
        if drop[i]:
            continue
        flipped = data.reversed_scene(data.parse_caption(captions[i])).caption
        if flipped != captions[i]:
            rows.append(i)
            wrong.append(flipped)
    if not rows:
        return None
    index = torch.tensor(rows, device=noisy.device)
    ids = encode_words(wrong, MAX_LENGTH).to(noisy.device)
    with autocast:
        pred_wrong = forward(hidden_states=noisy[index], timestep=sigma[index] * 1000,
                             encoder_hidden_states=text_encoder(ids), return_dict=False)[0]
    err_true = ((pred[index].float() - target[index]) ** 2).mean(dim=(1, 2, 3, 4))
    err_wrong = ((pred_wrong.float() - target[index]) ** 2).mean(dim=(1, 2, 3, 4))
    if getattr(args, "contrast_grad", "both") == "true":  # only push the true caption's error down
        err_wrong = err_wrong.detach()
    return (torch.relu((1 + args.contrast_margin) * err_true - err_wrong) / err_true.detach()).mean()


def noise_levels(batch: int, shifts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training noise levels: logit-normal, shifted by one of ``shifts`` drawn per sample (none drawn for one)."""
    u = torch.sigmoid(torch.randn(batch, generator=generator, device=shifts.device))
    shift = (shifts[torch.randint(len(shifts), (batch,), generator=generator, device=shifts.device)]
             if len(shifts) > 1 else shifts[0])
    return shift * u / (1 + (shift - 1) * u)


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/train_small"))
    ap.add_argument("--resume", type=Path, default=None, help="checkpoint folder (or folder of checkpoint-*.tar)")
    ap.add_argument("--time-budget", type=float, default=540.0, help="seconds from start until the script ends")
    ap.add_argument("--reserve", type=float, default=60.0, help="seconds kept for saving, samples and evaluation")
    ap.add_argument("--steps", type=int, default=None, help="steps in this run (overrides the time budget)")
    ap.add_argument("--canvases", default="16x96x160:12,8x64x96:64", help="FxHxW:batch,... (first: large)")
    ap.add_argument("--large-fraction", type=float, default=0.3, help="fraction of steps on the first canvas")
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 300; 100 on --resume)")
    ap.add_argument("--decay", action="store_true", help="cosine-anneal the lr to 10%% over this run (final run)")
    ap.add_argument("--train-shift", default=None, metavar="S[,S...]",
                    help="shift of the logit-normal noise levels trained on (default: the scheduler's, 3); several, "
                         "comma-separated: each sample draws one of them. Shift 3 puts 0.7%% of the samples below "
                         "noise 0.2, where sampling finishes an object's edges and corners, and 39%% above 0.8, where "
                         "it lays out the motion; shift 1 puts 8%% in each, the mixture 3,1 4.5%% and 23%% (small run "
                         "23 trained its last call with 3,1: small squares had come out with soft corners)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--text-dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-prompts", type=int, default=16, help="held-out captions scored at every canvas")
    ap.add_argument("--eval-steps", type=int, default=None, help="sampling steps (default: settings steps)")
    ap.add_argument("--eval-guidance", default=None,
                    help="comma-separated guidance scales to score at (default: the bundled setting); the first "
                         "one draws samples.png")
    ap.add_argument("--sample-prompts", type=int, default=6)
    ap.add_argument("--pack", action="store_true", help="write the checkpoint as tars < 15 MiB in --out")
    ap.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    ap.add_argument("--reversal-pairs", action="store_true",
                    help="half of every batch is the other half played backwards with reversed captions "
                         "(data.reversed_scene): the model must read the caption to know which way time runs")
    ap.add_argument("--ease", choices=sorted(data.EASES), default=None,
                    help="how the training clips' motions, size changes, pans, zooms and light changes progress: "
                         "linear (steady, as every bundled model was trained) or accel (from rest, speeding up: "
                         "an arrow of time, so a clip played backwards no longer looks like training data); default: "
                         "the resumed checkpoint's, else linear")
    ap.add_argument("--max-objects", type=int, choices=data.MAX_OBJECTS, default=None,
                    help="at most this many objects per training scene (default: the resumed checkpoint's, else 3, "
                         "i.e. 2 or 3 as every bundled model saw); 1 is the direction toy's single-object setting, "
                         "for a curriculum. Evaluation keeps the standard held-out captions")
    ap.add_argument("--plain-scenes", action=argparse.BooleanOptionalAction, default=None,
                    help="training scenes with an untextured floor, a still camera and a steady light (default: the "
                         "resumed checkpoint's, else off)")
    ap.add_argument("--freeze-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                    help="keep the text encoder as it is (fresh: its random initialisation, like the frozen umT5 of "
                         "a real Wan, which cannot merge words the denoiser does not read yet); default: the resumed "
                         "checkpoint's, else trained jointly")
    ap.add_argument("--text-encoder", type=Path, default=None, metavar="FOLDER",
                    help="a fresh run starts its text encoder from FOLDER (TinyTextEncoder.save_pretrained, e.g. "
                         "bench/pretrain_text_encoder.py's DIR/text_encoder) instead of a random one; with "
                         "--freeze-text-encoder it stays so, as a real Wan's pretrained umT5 does")
    ap.add_argument("--model-overrides", type=json.loads, default={}, metavar="JSON",
                    help='fresh runs: transformer config overrides, e.g. \'{"num_layers": 4, "ffn_dim": 512}\' (a '
                         'smaller model for a CPU experiment); a resume keeps the checkpoint\'s architecture')
    ap.add_argument("--text-overrides", type=json.loads, default={}, metavar="JSON",
                    help="fresh runs: text encoder config overrides, e.g. '{\"dim\": 128}' (the transformer's text "
                         "width follows)")
    ap.add_argument("--reseparate-words", nargs="+", default=[], metavar="WORD",
                    help="give these caption words fresh random token embeddings before training (e.g. left right "
                         "up down grows shrinks: words a trained text encoder has merged)")
    ap.add_argument("--contrast", type=float, default=0.0,
                    help="weight of a caption-contrast hinge: on --contrast-fraction of each batch the loss under the "
                         "reversed caption (data.reversed_scene) must exceed the loss under the true one by "
                         "--contrast-margin (relative), so the denoiser is trained to read the direction words")
    ap.add_argument("--contrast-fraction", type=float, default=0.25)
    ap.add_argument("--contrast-margin", type=float, default=0.05)
    ap.add_argument("--contrast-grad", choices=["both", "true"], default="both",
                    help="which errors the hinge's gradient reaches: both (run 7: the model can also satisfy it by "
                         "predicting worse under the wrong caption) or only the true caption's")
    ap.add_argument("--coordinates", action="store_true",
                    help="give the transformer each pixel's frame, row and column as 3 more input channels (a "
                         "checkpoint without them is widened with zero weights)")
    ap.add_argument("--family", choices=sorted(FAMILIES), default="wan",
                    help="the transformer of a fresh run (a resumed run keeps its checkpoint's): wan "
                         "(WanTransformer3DModel, text by cross-attention) or hunyuan_video "
                         "(HunyuanVideoTransformer3DModel, text in joint attention and pooled into the modulation)")
    ap.add_argument("--no-pooled-text", action="store_true",
                    help="hunyuan_video: zero and freeze the pooled-text projection's input weights, so the caption "
                         "reaches the video only through joint attention (kept on resume)")
    ap.add_argument("--no-raw-state", action="store_true",
                    help="keep only the EMA weights (bf16) in the checkpoint: a resume restarts the raw weights from "
                         "them; for models whose fp32 weights would not fit the device's 64 MiB transfers")
    ap.add_argument("--sdpa", choices=("auto",) + SDPA_CHOICES, default="default",
                    help="attention backend for training: auto times a forward + backward of each canvas under each "
                         "backend first (and the data drawing) and keeps the fastest")
    ap.add_argument("--smoke", action="store_true", help="tiny model and canvases, for a CPU check in seconds")
    args = ap.parse_args()
    # None: the scheduler's shift and the bundled guidance scale, read once the model is built
    train_shifts = eval_guidances = None
    try:
        if args.train_shift is not None:
            train_shifts = parse_numbers(args.train_shift, "--train-shift")
        if args.eval_guidance:
            eval_guidances = parse_numbers(args.eval_guidance, "--eval-guidance")
    except ValueError as exc:
        ap.error(str(exc))
    if train_shifts is not None and min(train_shifts) <= 0:
        ap.error(f"--train-shift must be > 0, got {args.train_shift}")

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    settings = dict(SETTINGS)
    canvases = parse_canvases(args.canvases)
    t_over, x_over = dict(args.model_overrides), dict(args.text_overrides)
    if args.smoke:
        canvases = [(4, 32, 48, 2), (2, 16, 24, 2)]
        settings.update(height=32, width=48, frames=4, steps=2, tile=[2, 4, 4])
        t_over = (dict(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=32,
                       rope_axes_dim=(8, 12, 12)) if args.family == "hunyuan_video"
                  else dict(num_layers=2, num_attention_heads=2, attention_head_dim=32, ffn_dim=128, freq_dim=64))
        t_over.update(args.model_overrides)
        x_over = {"dim": 64, "num_layers": 1, **args.text_overrides}
        args.eval_prompts = min(args.eval_prompts, 2)
        args.sample_prompts = min(args.sample_prompts, 2)
    settings["resolutions"] = [list(c[:3]) for c in canvases]
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="train_small_"))

    state = {"step": 0, "samples_seen": 0, "train_seconds": 0.0, "runs": [], "seed": args.seed}
    if args.resume is not None:
        if args.text_encoder is not None:
            ap.error("--text-encoder: only for a fresh run (a resumed run keeps its checkpoint's encoder)")
        components, ema_models, state = load_checkpoint(resolve_resume(args.resume, scratch))
        print(f"resumed from {args.resume} at step {state['step']}", flush=True)
    else:
        torch.manual_seed(args.seed)
        components = build_components(t_over, x_over, family=args.family)
        if args.text_encoder is not None:
            pretrained = TinyTextEncoder.from_pretrained(str(args.text_encoder), dtype=torch.float32)
            shape = {k: v for k, v in pretrained.config.items() if not k.startswith("_")}
            wanted = {k: v for k, v in components["text_encoder"].config.items() if not k.startswith("_")}
            if shape != wanted:
                ap.error(f"--text-encoder {args.text_encoder}: its config {shape} is not this run's {wanted}")
            components["text_encoder"] = pretrained
            state["text_encoder_from"] = str(args.text_encoder)
        ema_models = [copy.deepcopy(components["transformer"]), copy.deepcopy(components["text_encoder"])]
    for name, default in RESUMED_SETTINGS.items():  # a resumed run keeps its checkpoint's unless told otherwise
        if getattr(args, name) is None:
            setattr(args, name, state.get("config", {}).get(name, default))
    joint = is_joint_attention(components["transformer"])
    if args.coordinates:
        if joint:
            raise SystemExit("--coordinates: only for the wan family")
        t_config = components["transformer"].config
        if t_config.in_channels == t_config.out_channels:
            for model in (components["transformer"], ema_models[0]):
                add_coordinate_inputs(model)
            print("patch embedding widened by 3 coordinate channels (zero weights)", flush=True)
    if args.no_pooled_text and not joint:
        raise SystemExit("--no-pooled-text: only for the hunyuan_video family")
    pooled_text = not (args.no_pooled_text or (joint and not pooled_text_weight(components["transformer"]).any()))
    if not pooled_text:
        for model in (components["transformer"], ema_models[0]):
            cut_pooled_text(model)
        print("pooled text cut: the caption reaches the video through joint attention only", flush=True)
    if args.reseparate_words:
        reseparate_words((components["text_encoder"], ema_models[1]), args.reseparate_words, args.seed)
        print(f"fresh token embeddings for {' '.join(args.reseparate_words)}", flush=True)
    transformer = components["transformer"].to(device).train()
    text_encoder = components["text_encoder"].to(device).train()
    ema_models = [m.to(device).eval().requires_grad_(False) for m in ema_models]
    trained = [(transformer, ema_models[0])]
    if args.freeze_text_encoder:
        text_encoder.eval().requires_grad_(False)
        ema_models[1].load_state_dict(text_encoder.state_dict())
    else:
        trained.append((text_encoder, ema_models[1]))
    params = [p for m, _ in trained for p in m.parameters()]
    ema_params = [p for _, e in trained for p in e.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    if "data_generator" in state:
        data_gen.set_state(torch.frombuffer(bytearray(base64.b64decode(state["data_generator"])), dtype=torch.uint8))
    start_step = state["step"]
    noise_gen = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + start_step + 2)
    network = torch.compile(transformer) if args.compile else transformer

    def forward(hidden_states, timestep, encoder_hidden_states, return_dict=False):  # as the transformer's call
        return (denoise(transformer, hidden_states, timestep, encoder_hidden_states, network=network),)
    n_params = {"transformer": sum(p.numel() for p in transformer.parameters()),
                "text_encoder": sum(p.numel() for p in text_encoder.parameters())}
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {device_name} params {n_params} canvases {canvases}", flush=True)

    shifts = train_shifts or [float(components["scheduler"].config.shift)]
    shift_choices = torch.tensor(shifts, device=device)
    warmup = args.warmup if args.warmup is not None else (100 if args.resume is not None else 300)
    if args.smoke:
        warmup = 1
    calibrate, total = 30, args.steps  # steps of THIS run
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "params": n_params, "device": device_name,
           "model": {"class": type(transformer).__name__, "pooled_text": pooled_text if joint else None},
           "torch": torch.__version__, "resolutions": settings["resolutions"],
           "canvas_tokens": [[f, h // 4, w // 4] for f, h, w, _ in canvases], "batches": [c[3] for c in canvases],
           "start_step": start_step, "loss": [], "optimizer_state": "not kept: AdamW restarts with a warm-up"}
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    step_time: dict[int, list[float]] = {i: [] for i in range(len(canvases))}
    running = {i: [0.0, 0] for i in range(len(canvases))}
    timed = [0] * len(canvases)
    run_step, t_train0, decay_from = 0, time.time(), None
    contrast_log: list = []  # --contrast: the hinge per step since the last log entry

    def lr_at(i: int) -> float:
        lr = args.lr * min(1.0, (i + 1) / warmup)
        if args.decay and total is not None and i >= warmup:
            progress = min(1.0, (i - warmup) / max(1, total - warmup))
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        return lr

    def canvas_of(global_step: int) -> int:
        frac = args.large_fraction
        return 0 if math.floor((global_step + 1) * frac) > math.floor(global_step * frac) or len(canvases) == 1 else 1

    sdpa = args.sdpa
    if sdpa == "auto":
        log["step_costs"] = probe_step_costs(forward, text_encoder, canvases, autocast, device)
        opt.zero_grad(set_to_none=True)
        sdpa = pick_sdpa(log["step_costs"])
        print(f"step costs {json.dumps(log['step_costs'])} -> sdpa {sdpa}", flush=True)
    log["sdpa"] = sdpa
    budget_end = START + args.time_budget - args.reserve
    t_cal0 = None
    while total is None or run_step < total:
        if total is None and run_step == 5:
            t_cal0 = time.time()
        if total is None and run_step == 5 + calibrate:
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.time() - t_cal0) / calibrate
            total = max(run_step + 1, run_step + int((budget_end - time.time()) / per_step))
            log["calibrated_step_s"] = round(per_step, 4)
            print(f"calibrated {per_step * 1000:.1f} ms/step -> {total} steps this run", flush=True)
        if total is None and time.time() > budget_end:  # budget spent before calibration finished
            total = run_step
            break
        if run_step % 10 == 0 and total is not None and time.time() > budget_end + 30 and args.steps is None:
            log["stopped_early_at"] = run_step
            print(f"time budget exceeded at run step {run_step} of {total}: stopping", flush=True)
            break
        global_step = start_step + run_step
        which = canvas_of(global_step)
        f, h, w, batch = canvases[which]
        t0 = time.time()
        videos, captions = data.sample_batch(batch, frames=f, height=h, width=w, generator=data_gen, device=device,
                                             reversal_pairs=args.reversal_pairs, ease=args.ease,
                                             max_objects=args.max_objects, plain=args.plain_scenes)
        drop = torch.rand(batch, generator=data_gen) < args.text_dropout
        ids = encode_words(["" if d else c for c, d in zip(captions, drop.tolist())], MAX_LENGTH).to(device)
        noise = torch.randn(videos.shape, generator=noise_gen, device=device)
        sigma = noise_levels(batch, shift_choices, noise_gen)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy, target = (1 - s) * videos + s * noise, noise - videos
        for group in opt.param_groups:
            group["lr"] = lr_at(run_step)
        with autocast, sdpa_context(sdpa):
            pred = forward(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=text_encoder(ids),
                           return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        if args.contrast > 0:
            contrast = caption_contrast(forward, text_encoder, noisy, sigma, target, pred, captions, drop, args,
                                        autocast)
            if contrast is not None:
                loss = loss + args.contrast * contrast
                contrast_log.append(contrast.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + global_step) / (10 + global_step))
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        state["samples_seen"] += batch
        running[which][0] += loss.detach()  # summed on the device: no host sync
        running[which][1] += 1
        timed[which] += 1
        if timed[which] % 5 == 1:  # one step in five of each canvas is timed (a host sync)
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_time[which].append(time.time() - t0)
        run_step += 1
        if run_step % 100 == 0 or run_step == 1 or (total is not None and run_step == total):
            entry = {"step": start_step + run_step, "lr": lr_at(run_step - 1), "grad_norm": round(float(grad_norm), 4),
                     "time_s": round(time.time() - START, 1)}
            for i, (tot, cnt) in running.items():
                if cnt:
                    entry[f"loss_{'x'.join(map(str, canvases[i][:3]))}"] = round(float(tot) / cnt, 5)
            running = {i: [0.0, 0] for i in range(len(canvases))}
            if contrast_log:
                entry["contrast_hinge"] = round(float(torch.stack(contrast_log).mean()), 5)
                contrast_log = []
            log["loss"].append(entry)
            print(json.dumps(entry), flush=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - t_train0
    state["step"] = start_step + run_step
    state["train_seconds"] = round(state["train_seconds"] + seconds, 1)
    state["data_generator"] = base64.b64encode(data_gen.get_state().numpy().tobytes()).decode()
    state["lr"], state["last_lr"], state["warmup"], state["decayed"] = args.lr, lr_at(max(0, run_step - 1)), warmup, args.decay
    state["runs"] = state.get("runs", []) + [{"steps": run_step, "seconds": round(seconds, 1), "device": device_name,
                                              "canvases": args.canvases if not args.smoke else "smoke"}]
    state["config"] = {"canvases": [list(c) for c in canvases], "large_fraction": args.large_fraction,
                       "ema": args.ema, "text_dropout": args.text_dropout, "pooled_text": pooled_text,
                       **{name: getattr(args, name) for name in RESUMED_SETTINGS}}
    log.update(steps_this_run=run_step, steps_total=state["step"], train_seconds=round(seconds, 1),
               train_seconds_total=state["train_seconds"], samples_seen_total=state["samples_seen"], warmup=warmup,
               step_seconds={"x".join(map(str, canvases[i][:3])): round(sum(v) / len(v), 4)
                             for i, v in step_time.items() if v})
    last_step = state["step"] - 1
    decay = min(args.ema, (1 + last_step) / (10 + last_step))  # as at the last step
    with torch.no_grad():
        trained_params = [(p.float(), e.float())
                          for m, ema_m in trained for p, e in zip(m.parameters(), ema_m.parameters())]
        gap = sum(float((p - e).square().sum()) for p, e in trained_params)
        norm = sum(float(p.square().sum()) for p, _ in trained_params)
    # How far the EMA trails the raw weights. Without the raw state a resume restarts from the EMA: on a straight
    # path that is horizon * (1 - exp(-run / horizon)) steps of this run's progress lost (session 23).
    log["ema"] = {"decay_at_end": round(decay, 6), "horizon_steps": round(1 / (1 - decay)),
                  "relative_distance_to_raw": round((gap / max(norm, 1e-30)) ** 0.5, 6),
                  "resume_restarts_from_ema": bool(args.no_raw_state)}
    ema_components = dict(components, transformer=ema_models[0], text_encoder=ema_models[1])
    ckpt = (scratch / "checkpoint") if args.pack else (args.out / "checkpoint")
    write_checkpoint(ckpt, components, ema_models, state, settings, raw_state=not args.no_raw_state)
    if args.pack:
        log["checkpoint_tars"] = pack(ckpt, args.out)
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"checkpoint at step {state['step']} written at {time.time() - START:.0f}s", flush=True)

    # Samples and evaluation with the EMA weights (in fp32 on the training device).
    for m in ema_models:
        m.float()
    eval_steps = args.eval_steps or settings["steps"]
    prompts = data.prompt_set(max(args.eval_prompts, args.sample_prompts), EVAL_SEED)
    guidances = eval_guidances or [settings["guidance_scale"]]
    log["eval"] = {"steps": eval_steps, "guidance": guidances[0], "prompts": prompts[:args.eval_prompts]}
    for gi, guidance in enumerate(guidances):
        for i, canvas in enumerate(canvases):
            t0 = time.time()
            n = args.eval_prompts if (i or gi) else max(args.eval_prompts, args.sample_prompts)
            if n == 0:
                continue
            videos = generate(ema_components, prompts[:n], canvas, eval_steps, guidance, args.seed)
            key = "x".join(map(str, canvas[:3])) + (f"@cfg{guidance:g}" if gi else "")
            if i == 0 and gi == 0 and args.sample_prompts:
                write_png(args.out / "samples.png", video_grid(videos[: args.sample_prompts]))
                log["sample_prompts"] = prompts[: args.sample_prompts]
            if args.eval_prompts:
                log["eval"][key] = scored(videos[: args.eval_prompts], prompts[: args.eval_prompts], t0, guidance,
                                          f"eval {key}")
            (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    if args.eval_prompts and (args.max_objects < 3 or args.plain_scenes):  # also on its own kind of scene
        own = data.prompt_set(args.eval_prompts, EVAL_SEED, args.max_objects, args.plain_scenes)
        canvas, t0 = canvases[-1], time.time()
        videos = generate(ema_components, own, canvas, eval_steps, guidances[0], args.seed)
        log["eval_own_distribution"] = {"prompts": own, "x".join(map(str, canvas[:3])): scored(
            videos, own, t0, guidances[0], "eval on its own distribution")}
        (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    # Why motion fails (session 11): does the model tell a video from itself played backwards, and does its text
    # encoder keep the direction words apart? (bench/small_caption_loss.py, bench/small_caption_probe.py)
    from small_caption_loss import caption_gaps, symmetries
    from small_caption_probe import text_separation

    if args.eval_prompts:  # part of the evaluation (off with --eval-prompts 0)
        diagnostic_scenes = [data.parse_caption(c) for c in  # held-out scenes of the training distribution
                             data.prompt_set(4, EVAL_SEED, args.max_objects, args.plain_scenes)]
        probe_canvas = (8, *canvases[-1][1:3])  # 8 frames (the shuffle test's) at the smallest canvas trained on
        gaps = {sigma: caption_gaps(ema_models[0], ema_models[1], diagnostic_scenes, sigma, args.ease, probe_canvas)
                for sigma in (0.8, 0.95)}
        log["direction_diagnostics"] = {
            "symmetry_defects": symmetries(ema_models[0], ema_models[1], diagnostic_scenes, ease=args.ease,
                                           canvas=probe_canvas),
            "text_encoder_separation": text_separation(ema_models[1], diagnostic_scenes),
            "caption_loss_gap": mean_gaps(gaps),
            "scenes": [s.caption for s in diagnostic_scenes]}
        if args.no_raw_state:  # the raw weights are dropped: how much further they read the words than the EMA
            transformer.eval(), text_encoder.eval()
            log["direction_diagnostics"]["caption_loss_gap_raw_weights"] = mean_gaps(
                {sigma: caption_gaps(transformer, text_encoder, diagnostic_scenes, sigma, args.ease, probe_canvas)
                 for sigma in (0.8, 0.95)})
        print("direction diagnostics: " + json.dumps(log["direction_diagnostics"]), flush=True)
    log["total_seconds"] = round(time.time() - START, 1)
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"done in {log['total_seconds']}s", flush=True)


if __name__ == "__main__":
    main()
