"""Train the bundled tiny video model (sta_search/tiny) with flow matching on procedural videos.

    python bench/train_tiny.py --out OUT [--time-budget 450] [--steps N] [--smoke]

Fresh videos + captions are drawn every step from `sta_search.tiny.data` (fixed seeds); the
transformer (diffusers `WanTransformer3DModel`, pixel space, patch 1x4x4) and the word-level text
encoder are trained jointly with the rectified-flow objective of `FlowMatchEulerDiscreteScheduler`
(x_s = (1 - s) x0 + s noise, target noise - x0, timestep = 1000 s), bf16 autocast, AdamW, EMA.

Without ``--steps`` the run is time-boxed: after 40 calibration steps the total step count is fixed
from the measured step time so that training ends ``--time-budget`` seconds after start; the cosine
learning-rate schedule then runs over exactly that many steps (so a rerun on the same hardware gives
the same count, and the log records it). Writes into ``--out``:

- ``tiny_transformer.tar`` + ``tiny_rest.tar``: the diffusers pipeline folder ``weights/``
  (model_index.json, transformer/, text_encoder/, scheduler/, tokenizer/ when transformers is
  installed, sta_search.json), EMA weights in fp32; unpack both in the same place;
- ``samples_*.png``: one row per prompt, one column per frame;
- ``train_log.json``: configuration, loss curve, step count, timings, device.

``--finalize FOLDER`` adds the tokenizer to an unpacked folder on a machine with transformers.

``--folder DIR`` also writes the unpacked pipeline folder there (half-way checkpoint and final EMA
weights; without transformers the tokenizer is copied from ``--init-from`` or the shipped folder), so
the result loads directly with ``load_tiny(folder=DIR)`` / ``load_model(DIR)``.

Continuing training (``--init-from``): the warm-up defaults to 50 steps instead of 200 (the weights
are already trained; a long warm-up wastes the budget), and a lower ``--lr`` (e.g. 2e-4) avoids
undoing what the first run learnt. ``--logit-mean`` shifts the logit-normal timestep density (a positive
value puts more weight on high noise, where layout and motion are decided); ``--temporal-loss W`` adds
``W`` x the MSE of the frame-to-frame differences of the prediction error (a direct penalty on wrong
motion / temporal incoherence). Both default to 0 (the shipped run).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import struct
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import torch

START = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sta_search.tiny import SETTINGS_FILE, data  # noqa: E402
from sta_search.tiny.pipeline import TinyVideoPipeline, build_components  # noqa: E402
from sta_search.tiny.text import MAX_LENGTH, encode_words  # noqa: E402

SHIPPED_SETTINGS = {"tile": [2, 4, 4], "height": 64, "width": 64, "frames": 8, "steps": 8, "guidance_scale": 4.0}
SAMPLE_PROMPTS = [
    "a big red circle moves right over a blue floor",
    "a small yellow square moves left over a checkered purple floor",
    "a big white triangle bounces over a gray floor",
    "a big green ring grows over a striped black floor",
    "a big cyan square shrinks over a brown floor",
    "a small orange circle moves down over a striped green floor",
    "a big purple triangle moves up over a checkered gray floor",
    "a small blue ring moves right over a black floor",
]


def write_png(path: Path, image) -> None:
    """Minimal RGB8 PNG writer (no imaging library on the training machine)."""
    image = image.contiguous()
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].numpy().tobytes() for y in range(h))

    def chunk(tag, payload):
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def video_grid(videos: torch.Tensor) -> torch.Tensor:
    """(n, 3, F, H, W) in [-1, 1] -> uint8 (n*(H+2), F*(W+2), 3) with a white gutter."""
    n, _, f, h, w = videos.shape
    v = ((videos.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    grid = torch.full((n * (h + 2), f * (w + 2), 3), 255, dtype=torch.uint8)
    for i in range(n):
        for j in range(f):
            grid[i * (h + 2): i * (h + 2) + h, j * (w + 2): j * (w + 2) + w] = v[i, :, j].permute(1, 2, 0)
    return grid


def save_folder(folder: Path, components: dict, settings: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    components["transformer"].save_pretrained(folder / "transformer", safe_serialization=True)
    components["text_encoder"].save_pretrained(folder / "text_encoder", safe_serialization=True)
    components["scheduler"].save_pretrained(folder / "scheduler")
    import diffusers

    index = {
        "_class_name": "TinyVideoPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["sta_search.tiny.text", "TinyTextEncoder"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    finalize(folder, required=False)


def finalize(folder: Path, required: bool = True) -> None:
    try:
        from sta_search.tiny.text import save_tokenizer

        save_tokenizer(folder / "tokenizer")
    except ImportError:
        if required:
            raise
        print("transformers/tokenizers missing: tokenizer/ not written (run --finalize later)", flush=True)


def ensure_tokenizer(folder: Path, sources: list[Path]) -> None:
    """Copy tokenizer/ from the first source that has one when it could not be written here."""
    if (folder / "tokenizer").is_dir():
        return
    for src in sources:
        if src is not None and (Path(src) / "tokenizer").is_dir():
            shutil.copytree(Path(src) / "tokenizer", folder / "tokenizer")
            print(f"tokenizer/ copied from {src}", flush=True)
            return


def write_folder(target: Path, components: dict, settings: dict, sources: list[Path]) -> None:
    """Write the unpacked pipeline folder to `target` atomically (a temp sibling, then rename)."""
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    save_folder(tmp, components, settings)
    ensure_tokenizer(tmp, sources)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def pack(folder: Path, out: Path) -> None:
    """Two tars (each under the 16 MB transfer limit): transformer/, and everything else."""
    for name, keep in (("tiny_transformer.tar", lambda p: p.parts[:1] == ("transformer",)),
                       ("tiny_rest.tar", lambda p: p.parts[:1] != ("transformer",))):
        tmp = out / (name + ".tmp")
        with tarfile.open(tmp, "w") as tar:
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(folder)
                if path.is_file() and keep(rel):
                    tar.add(path, arcname=str(Path("weights") / rel))
        os.replace(tmp, out / name)


@torch.no_grad()
def sample(components: dict, prompts: list[str], steps: int, guidance: float, settings: dict, seed: int):
    pipe = TinyVideoPipeline(tokenizer=None, **components)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator(device=components["transformer"].device).manual_seed(seed)
    out = pipe(prompts, height=settings["height"], width=settings["width"], num_frames=settings["frames"],
               num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="latent")
    return out.frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/train_tiny"))
    ap.add_argument("--time-budget", type=float, default=450.0, help="seconds from start until training stops")
    ap.add_argument("--steps", type=int, default=None, help="fixed step count (overrides the time budget)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 200; 50 with --init-from)")
    ap.add_argument("--logit-mean", type=float, default=0.0,
                    help="mean of the logit-normal timestep density before the shift (0: the shipped run)")
    ap.add_argument("--temporal-loss", type=float, default=0.0,
                    help="weight of the extra MSE on frame-to-frame differences of the prediction error")
    ap.add_argument("--folder", type=Path, default=None, help="also write the unpacked pipeline folder here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-dropout", type=float, default=0.1)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--sample-steps", type=int, default=None,
                    help="only one sample grid with this many steps (default: 8, 4, 16 steps at guidance 4, 8 at 1)")
    ap.add_argument("--smoke", action="store_true", help="tiny model and frame size, for a CPU check")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start from the transformer and text encoder of this pipeline folder (e.g. the shipped one)")
    ap.add_argument("--finalize", type=Path, default=None, help="only add tokenizer/ to this folder")
    args = ap.parse_args()
    if args.finalize is not None:
        finalize(args.finalize)
        return

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    settings = dict(SHIPPED_SETTINGS)
    t_over, x_over = {}, {}
    if args.smoke:
        settings.update(height=32, width=32, frames=4)
        t_over = dict(num_layers=2, num_attention_heads=2, ffn_dim=128)
        x_over = dict(num_layers=1)
    torch.manual_seed(args.seed)
    components = build_components(t_over, x_over)
    if args.init_from is not None:
        from diffusers import WanTransformer3DModel

        from sta_search.tiny.text import TinyTextEncoder

        components["transformer"] = WanTransformer3DModel.from_pretrained(args.init_from / "transformer")
        components["text_encoder"] = TinyTextEncoder.from_pretrained(args.init_from / "text_encoder")
        print(f"initialised from {args.init_from}", flush=True)
    transformer = components["transformer"].to(device).train()
    text_encoder = components["text_encoder"].to(device).train()
    params = [p for m in (transformer, text_encoder) for p in m.parameters()]
    ema_models = [copy.deepcopy(transformer).eval(), copy.deepcopy(text_encoder).eval()]
    ema_params = [p for m in ema_models for p in m.parameters()]
    for p in ema_params:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    noise_gen = torch.Generator(device=device).manual_seed(args.seed + 2)
    n_params = {"transformer": sum(p.numel() for p in transformer.parameters()),
                "text_encoder": sum(p.numel() for p in text_encoder.parameters())}
    print(f"device {device} params {n_params} settings {settings}", flush=True)

    shift = components["scheduler"].config.shift
    warmup = args.warmup if args.warmup is not None else (50 if args.init_from is not None else 200)
    calibrate = 40
    tokenizer_sources = [args.init_from, Path(__file__).resolve().parents[1] / "sta_search" / "tiny" / "weights"]
    total_steps = args.steps
    log = {"loss": [], "args": {k: str(v) for k, v in vars(args).items()}, "params": n_params,
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "torch": torch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    running, running_n, step, t_train0, t_cal0 = 0.0, 0, 0, time.time(), None
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    half_saved = False

    def lr_at(i):
        if i < warmup:
            return args.lr * (i + 1) / warmup
        if total_steps is None:
            return args.lr
        progress = min(1.0, (i - warmup) / max(1, total_steps - warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    while total_steps is None or step < total_steps:
        if step % 10 == 0 and time.time() - START > args.time_budget + 20 and not args.steps:
            print(f"time budget exceeded at step {step} of {total_steps}: stopping early", flush=True)
            log["stopped_early_at"] = step
            break
        if step == 5:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_cal0 = time.time()
        if total_steps is None and step == 5 + calibrate:
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.time() - t_cal0) / calibrate
            remaining = args.time_budget - (time.time() - START)
            total_steps = max(step + 1, step + int(remaining / per_step))
            log["calibrated_step_s"] = per_step
            print(f"calibrated {per_step * 1000:.1f} ms/step -> total_steps {total_steps}", flush=True)

        videos, captions = data.sample_batch(args.batch, frames=settings["frames"], height=settings["height"],
                                             width=settings["width"], generator=data_gen, device=device)
        drop = torch.rand(args.batch, generator=data_gen) < args.text_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        ids = encode_words(captions, MAX_LENGTH).to(device)
        noise = torch.randn(videos.shape, generator=noise_gen, device=device)
        u = torch.sigmoid(torch.randn(args.batch, generator=noise_gen, device=device) + args.logit_mean)
        sigma = shift * u / (1 + (shift - 1) * u)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * videos + s * noise
        target = noise - videos
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with autocast:
            text = text_encoder(ids)
            pred = transformer(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=text,
                               return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        if args.temporal_loss > 0 and pred.shape[2] > 1:
            err = pred.float() - target
            loss = loss + args.temporal_loss * (err[:, :, 1:] - err[:, :, :-1]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        if step % 10 == 0:  # a host sync every 10 steps only
            running, running_n = running + loss.item(), running_n + 1
        step += 1
        if step % 100 == 0 or step == 1:
            avg = running / max(1, running_n)
            running, running_n = 0.0, 0
            entry = {"step": step, "loss": round(avg, 5), "grad_norm": round(float(grad_norm), 4),
                     "lr": lr_at(step - 1), "time_s": round(time.time() - START, 1)}
            log["loss"].append(entry)
            print(json.dumps(entry), flush=True)
        if (not half_saved and total_steps is not None and step >= total_steps // 2 and not args.smoke):
            half_saved = True
            with tempfile.TemporaryDirectory() as tmp:
                ema_components = dict(components, transformer=ema_models[0], text_encoder=ema_models[1])
                save_folder(Path(tmp) / "weights", ema_components, settings)
                pack(Path(tmp) / "weights", args.out)
            if args.folder is not None:
                write_folder(args.folder, ema_components, settings, tokenizer_sources)
            print(f"half-way checkpoint at step {step}", flush=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
    log.update(steps=step, train_seconds=round(time.time() - t_train0, 1), batch=args.batch,
               samples_seen=step * args.batch)
    ema_components = dict(components, transformer=ema_models[0], text_encoder=ema_models[1])
    with tempfile.TemporaryDirectory() as tmp:
        save_folder(Path(tmp) / "weights", ema_components, settings)
        pack(Path(tmp) / "weights", args.out)
    if args.folder is not None:
        write_folder(args.folder, ema_components, settings, tokenizer_sources)
    log.update(warmup=warmup, lr=args.lr, logit_mean=args.logit_mean, temporal_loss=args.temporal_loss)
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")  # rewritten after the samples
    print(f"saved weights at {time.time() - START:.0f}s", flush=True)

    prompts = SAMPLE_PROMPTS if not args.smoke else SAMPLE_PROMPTS[:2]
    log["sample_prompts"] = prompts
    configs = ((8, 4.0), (4, 4.0), (16, 4.0), (8, 1.0)) if args.sample_steps is None else ((args.sample_steps, 4.0),)
    for steps, guidance in configs:
        t0 = time.time()
        videos = sample(ema_components, prompts, steps, guidance, settings, seed=args.seed)
        write_png(args.out / f"samples_s{steps}_g{guidance:g}.png", video_grid(videos))
        log.setdefault("sample_seconds", {})[f"s{steps}_g{guidance:g}"] = round(time.time() - t0, 2)
    log["total_seconds"] = round(time.time() - START, 1)
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"done in {log['total_seconds']}s", flush=True)


if __name__ == "__main__":
    main()
