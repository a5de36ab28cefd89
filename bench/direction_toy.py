"""Can a small Wan transformer learn a motion direction from its caption, with and without absolute coordinates?

    python bench/direction_toy.py --out DIR [--seconds 240] [--seeds 0 1] [--variants rope coords]

Why (bench/NOTES.md, session 14): the bundled `small` model follows colours (~0.9) but not motion directions (0.4-0.5
held out), and its denoiser changes by only 0.8% when the frames are reversed (4.6-11.7% when shuffled). A Wan
transformer knows positions only through 3D RoPE, i.e. relative offsets, so it is nearly translation-equivariant in
time and space; but in the training data the direction shows up as an absolute layout (an object that moves left
starts on the right, because it must stay on screen). At high noise the ideal prediction for "moves left" is that
layout, which an equivariant model cannot express. The test: the same small `WanTransformer3DModel` trained on the
same toy videos, once as is (``rope``) and once with three constant input channels holding each pixel's frame, row
and column in [-1, 1] (``coords``; the model's ``in_channels`` grows by 3, the output stays 3 channels).

Toy videos: 8 frames of 32 x 32 px, one white square (side 6 px) on black moving left, right, up or down by 12-18
px, started where it stays on screen; the caption is the direction (one learned 32-d token for the cross-attention).
Flow matching (x_t = (1 - s) x0 + s noise, target noise - x0, s uniform), AdamW, a fixed CPU time per run. Scored on
64 sampled videos (16 per direction, 16 Euler steps): the brightness centroid's displacement from the first two
frames to the last two must go the captioned way by >= 4 px and more along that axis than across it (chance 0.25
at best); also the reversal defect, as `train_small.py` measures it (relative change of the prediction when the
noisy input is played backwards and the output reversed back, at noise 0.8), and the caption loss gap (how much
the loss on true videos rises under the opposite caption, at noise 0.5 / 0.8 / 0.95: zero when the caption is
ignored). Variants ``adaln`` (the caption also added to the timestep embedding) and ``--guidance`` (with
``--caption-dropout``) test whether a stronger path for the caption helps; ``--task colour`` is the control (the
caption names the square's colour, the direction is random). ``--device cuda`` runs the network on a GPU for many
more steps. Session 16 added: ``--size`` (the default width 64 is close to the 48 pixel values a patch carries, so the
network may be too narrow to pass the noise through and read the caption too), ``--wrap`` (videos on a torus: the
start layout carries no direction, only the relative motion does), ``--sigma-shift`` (training noise levels as in
``train_small.py``), ``--extra-guidance``, ``--caption-words`` (multi-token captions) and the variants ``hunyuan`` /
``hunyuan-nopool`` (a stock `HunyuanVideoTransformer3DModel`, whose pooled text modulates the norms). Session 20
added ``--arrow trail|accel`` (an arrow of time in the data), with which Wan's cross-attention alone reads the
direction. Writes
``DIR/direction-toy-<task>-<device>-<utc>.json`` (schema v2: each run's ``score`` is the direction or colour score,
as ``task`` says; v1 called it ``direction_score``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sta_search.tiny.pipeline import with_coordinates  # noqa: E402

FRAMES, SIZE, SIDE = 8, 32, 6
DIRECTIONS = ("left", "right", "up", "down")
STEP = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (row, column) sign


COLOURS = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])  # red, green, blue, yellow
TASK = {"name": "direction", "wrap": False, "arrow": "none"}  # "colour": the caption names the square's colour,
# its direction random; "wrap": the canvas is a torus (the square starts anywhere and re-enters on the far side), so
# the start layout says nothing about the direction and only the relative motion does; "arrow" (session 20): an
# arrow of time in the data, "trail" (the square leaves a fading trail of its last two positions) or "accel" (it
# starts from rest and speeds up), so that a video played backwards no longer looks like training data
TRAIL = (1.0, 0.5, 0.25)  # brightness of the square now, one frame ago, two frames ago


def make_videos(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, FRAMES, SIZE, SIZE) in [-1, 1]: a square on black. Task ``direction``: white, moving the captioned way
    (``labels`` index DIRECTIONS); task ``colour``: the captioned colour (``labels`` index COLOURS), moving a
    random way."""
    colour_task = TASK["name"] == "colour"
    directions = torch.randint(len(DIRECTIONS), labels.shape, generator=generator) if colour_task else labels
    B = directions.shape[0]
    wrap = TASK["wrap"]
    travel = (10 if wrap else 12) + (4 if wrap else 6) * torch.rand(B, generator=generator)  # under half the torus
    half = SIDE / 2
    lo, hi = half, SIZE - half
    start = torch.empty(B, 2)
    dr = torch.tensor([STEP[DIRECTIONS[d]][0] for d in directions.tolist()], dtype=torch.float32)
    dc = torch.tensor([STEP[DIRECTIONS[d]][1] for d in directions.tolist()], dtype=torch.float32)
    for axis, delta in ((0, dr), (1, dc)):
        u = torch.rand(B, generator=generator)
        moving_lo = torch.where(delta < 0, lo + travel, torch.full_like(travel, lo))
        moving_hi = torch.where(delta > 0, hi - travel, torch.full_like(travel, hi))
        start[:, axis] = u * SIZE if wrap else moving_lo + u * (moving_hi - moving_lo)
    arrow = TASK["arrow"]
    frame = torch.zeros(B, FRAMES, SIZE, SIZE)
    grid = torch.arange(SIZE, dtype=torch.float32) + 0.5
    for lag, brightness in enumerate(TRAIL if arrow == "trail" else TRAIL[:1]):
        t = torch.linspace(0, 1, FRAMES) - lag / (FRAMES - 1)  # the trail continues the path back before frame 0
        progress = t.clamp_min(0) ** 2 if arrow == "accel" else t
        rows = start[:, 0, None] + dr[:, None] * travel[:, None] * progress  # (B, F)
        cols = start[:, 1, None] + dc[:, None] * travel[:, None] * progress
        offset_r = grid[None, None, :] - rows[..., None]  # (B, F, SIZE)
        offset_c = grid[None, None, :] - cols[..., None]
        if wrap:
            offset_r = torch.remainder(offset_r + SIZE / 2, SIZE) - SIZE / 2
            offset_c = torch.remainder(offset_c + SIZE / 2, SIZE) - SIZE / 2
        in_r = (offset_r.abs() <= half).float()
        in_c = (offset_c.abs() <= half).float()
        frame = torch.maximum(frame, brightness * in_r[..., :, None] * in_c[..., None, :])  # (B, F, SIZE, SIZE)
    if colour_task:
        return frame[:, None] * (COLOURS[labels][:, :, None, None, None] + 1) - 1
    return (frame * 2 - 1)[:, None].expand(B, 3, FRAMES, SIZE, SIZE).contiguous()


def colour_score(videos: torch.Tensor, colours: torch.Tensor, details: dict | None = None) -> float:
    """Share of videos whose bright pixels' mean colour is nearest the captioned one."""
    bright = (videos.max(1).values > 0).float()[:, None]  # (B, 1, F, H, W)
    mean = (videos * bright).sum((2, 3, 4)) / bright.sum((2, 3, 4)).clamp_min(1)
    nearest = torch.cdist(mean, COLOURS).argmin(1)
    if details is not None:
        details["mean_bright_share"] = float(bright.mean())
    return float((nearest == colours).float().mean())


NULL = len(DIRECTIONS)  # the dropped caption's token


class Toy(torch.nn.Module):
    """``variant``: ``rope`` (Wan as is: the caption reaches the video only through cross-attention), ``coords`` (plus
    3 constant input channels with each pixel's frame, row and column), ``adaln`` (plus the caption's own embedding
    added to the timestep embedding, so it modulates every block's norms, as pooled text does in HunyuanVideo),
    ``coords+adaln``; ``hunyuan`` (a stock `HunyuanVideoTransformer3DModel` of the same width: the caption's tokens
    join the video tokens in attention, and their mean is the pooled text that modulates the norms) or
    ``hunyuan-nopool`` (the same with the pooled text zero: the caption only through attention). ``caption_words``:
    the caption is that many tokens, fixed filler words followed by the direction, so that attention to it depends
    on the query (with one token, Wan's cross-attention adds the same vector to every video token)."""

    def __init__(self, variant: str, heads: int = 2, head_dim: int = 32, layers: int = 2, caption_words: int = 1):
        super().__init__()
        from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

        self.variant, self.caption_words = variant, caption_words
        coords = "coords" in variant
        self.adaln_words = None
        if variant.startswith("hunyuan"):
            self.net = HunyuanVideoTransformer3DModel(
                in_channels=3, out_channels=3, num_attention_heads=heads, attention_head_dim=head_dim,
                num_layers=layers // 2, num_single_layers=layers - layers // 2, num_refiner_layers=1, mlp_ratio=2.0,
                patch_size=4, patch_size_t=1, guidance_embeds=False, text_embed_dim=32, pooled_projection_dim=32,
                rope_axes_dim=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8))
        else:
            self.net = WanTransformer3DModel(patch_size=(1, 4, 4), num_attention_heads=heads,
                                             attention_head_dim=head_dim, in_channels=6 if coords else 3,
                                             out_channels=3, text_dim=32, freq_dim=32, ffn_dim=2 * heads * head_dim,
                                             num_layers=layers, rope_max_seq_len=64)
        self.words = torch.nn.Embedding(len(DIRECTIONS) + caption_words, 32)  # directions, NULL, then fillers
        if "adaln" in variant:
            self.adaln_words = torch.nn.Embedding(len(DIRECTIONS) + 1, self.net.config.num_attention_heads
                                                  * self.net.config.attention_head_dim)
            self._adaln = None
            self.net.condition_embedder.time_embedder.register_forward_hook(
                lambda module, args, out: out + self._adaln)

    def forward(self, x, sigma, directions):
        """CPU tensors in and out; the network runs on whatever device it was moved to."""
        device = self.words.weight.device
        x, sigma, directions = x.to(device), sigma.to(device), directions.to(device)
        fillers = torch.arange(len(DIRECTIONS) + 1, len(DIRECTIONS) + self.caption_words, device=device)
        tokens = torch.cat([fillers.expand(len(directions), -1), directions[:, None]], dim=1)
        text = self.words(tokens)  # (B, caption_words, 32)
        if self.variant.startswith("hunyuan"):
            pooled = torch.zeros_like(text[:, 0]) if self.variant == "hunyuan-nopool" else text.mean(1)
            mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device)
            return self.net(x, timestep=sigma * 1000, encoder_hidden_states=text, encoder_attention_mask=mask,
                            pooled_projections=pooled, return_dict=False)[0].cpu()
        x = with_coordinates(x, self.net)  # the coords variants' 3 more input channels
        if self.adaln_words is not None:
            self._adaln = self.adaln_words(directions)
        return self.net(x, timestep=sigma * 1000, encoder_hidden_states=text, return_dict=False)[0].cpu()


@torch.no_grad()
def sample(model, directions, generator, steps: int = 16, guidance: float = 1.0) -> torch.Tensor:
    x = torch.randn(directions.shape[0], 3, FRAMES, SIZE, SIZE, generator=generator)
    sigmas = torch.linspace(1, 0, steps + 1)
    for s0, s1 in zip(sigmas[:-1], sigmas[1:]):
        v = model(x, s0.expand(x.shape[0]), directions)
        if guidance != 1.0:
            v_null = model(x, s0.expand(x.shape[0]), torch.full_like(directions, NULL))
            v = v_null + guidance * (v - v_null)
        x = x + (s1 - s0) * v
    return x


def direction_score(videos: torch.Tensor, directions: torch.Tensor, details: dict | None = None) -> float:
    """Share of videos whose brightness centroid moves the captioned way (>= 4 px, more along than across).
    ``details``, when given, receives the mean signed travel along the captioned axis and the mean travel across it."""
    w = ((videos.mean(1) + 1) / 2).clamp(0, 1) ** 2  # (B, F, H, W)
    if TASK["wrap"]:  # circular centroids on the torus; a displacement is read in (-SIZE / 2, SIZE / 2]
        phase = torch.polar(torch.ones(SIZE), 2 * torch.pi * torch.arange(SIZE) / SIZE)
        r = (w.sum(-1) * phase).sum(-1)  # (B, F) complex
        c = (w.sum(-2) * phase).sum(-1)
        dr = torch.angle(r[:, -2:].sum(1) * r[:, :2].sum(1).conj()) * SIZE / (2 * torch.pi)
        dc = torch.angle(c[:, -2:].sum(1) * c[:, :2].sum(1).conj()) * SIZE / (2 * torch.pi)
    else:
        grid = torch.arange(SIZE, dtype=torch.float32)
        mass = w.sum((-1, -2)).clamp_min(1e-6)
        r = (w.sum(-1) * grid).sum(-1) / mass  # (B, F)
        c = (w.sum(-2) * grid).sum(-1) / mass
        dr = r[:, -2:].mean(1) - r[:, :2].mean(1)
        dc = c[:, -2:].mean(1) - c[:, :2].mean(1)
    ok, alongs, acrosses = [], [], []
    for i, d in enumerate(directions.tolist()):
        sr, sc = STEP[DIRECTIONS[d]]
        along, across = (dr[i] * sr, dc[i].abs()) if sr else (dc[i] * sc, dr[i].abs())
        ok.append(bool(along >= 4 and along > across))
        alongs.append(float(along))
        acrosses.append(float(across))
    if details is not None:
        details["mean_travel_along_px"] = sum(alongs) / len(alongs)
        details["mean_travel_across_px"] = sum(acrosses) / len(acrosses)
        details["mean_bright_share"] = float(((videos.mean(1) + 1) / 2).clamp(0, 1).mean())
    return sum(ok) / len(ok)


@torch.no_grad()
def reversal_defect(model, generator, sigma: float = 0.8) -> float:
    directions = torch.arange(64) % len(DIRECTIONS)
    x0 = make_videos(directions, generator)
    x = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=generator)
    s = torch.full((64,), sigma)
    plain = model(x, s, directions)
    reversed_back = model(x.flip(2), s, directions).flip(2)
    return ((plain - reversed_back).norm() / plain.norm()).item()


OPPOSITE = torch.tensor([1, 0, 3, 2])


@torch.no_grad()
def caption_loss_gap(model, generator, sigmas=(0.5, 0.8, 0.95)) -> dict:
    """Relative increase of the flow-matching loss on true toy videos under a wrong caption (same noise): the opposite
    direction, or for the colour task red <-> green and blue <-> yellow. Zero when the denoiser ignores the caption."""
    directions = torch.arange(128) % len(DIRECTIONS)
    x0 = make_videos(directions, generator)
    noise = torch.randn(x0.shape, generator=generator)
    gaps = {}
    for sigma in sigmas:
        x = (1 - sigma) * x0 + sigma * noise
        s = torch.full((128,), sigma)
        true = torch.nn.functional.mse_loss(model(x, s, directions), noise - x0)
        wrong = torch.nn.functional.mse_loss(model(x, s, OPPOSITE[directions]), noise - x0)
        gaps[f"{sigma:g}"] = (wrong / true - 1).item()
    return gaps


def train(variant: str, seed: int, seconds: float, batch: int, lr: float, caption_dropout: float = 0.0,
          guidance: float = 1.0, device: str = "cpu", size: tuple[int, int, int] = (2, 32, 2),
          sigma_shift: float | None = None, extra_guidance: tuple[float, ...] = (), caption_words: int = 1) -> dict:
    """``size``: (heads, head dim, layers). ``sigma_shift``: None draws the training noise level uniformly; a number
    draws it logit-normal and shifted towards noise as ``train_small.py`` does (shift 3 there)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(1000 + seed)
    model = Toy(variant, *size, caption_words=caption_words).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    t0, step, losses = time.time(), 0, []
    while time.time() - t0 < seconds:
        directions = torch.randint(len(DIRECTIONS), (batch,), generator=generator)
        x0 = make_videos(directions, generator)
        noise = torch.randn(x0.shape, generator=generator)
        if sigma_shift is None:
            sigma = torch.rand(batch, generator=generator)
        else:
            u = torch.sigmoid(torch.randn(batch, generator=generator))
            sigma = sigma_shift * u / (1 + (sigma_shift - 1) * u)
        x = (1 - sigma[:, None, None, None, None]) * x0 + sigma[:, None, None, None, None] * noise
        shown = torch.where(torch.rand(batch, generator=generator) < caption_dropout, NULL, directions)
        loss = torch.nn.functional.mse_loss(model(x, sigma, shown), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
    train_seconds = time.time() - t0
    model.eval()
    eval_gen = torch.Generator().manual_seed(99)
    directions = torch.arange(64) % len(DIRECTIONS)
    videos = sample(model, directions, eval_gen, guidance=guidance)
    on_data: dict = {}
    scorer = colour_score if TASK["name"] == "colour" else direction_score
    data_score = scorer(make_videos(directions, torch.Generator().manual_seed(7)), directions, on_data)
    sampled: dict = {}
    score = scorer(videos, directions, sampled)
    by_guidance = {f"{guidance:g}": score}
    for g in extra_guidance:
        by_guidance[f"{g:g}"] = scorer(sample(model, directions, torch.Generator().manual_seed(99), guidance=g),
                                       directions)
    return {"task": TASK["name"], "wrap": TASK["wrap"], "arrow": TASK["arrow"], "variant": variant, "seed": seed,
            "device": device,
            "heads": size[0], "head_dim": size[1], "layers": size[2], "caption_words": caption_words,
            "parameters": sum(p.numel() for p in model.parameters()), "sigma_shift": sigma_shift,
            "batch": batch, "lr": lr, "caption_dropout": caption_dropout, "guidance": guidance, "steps": step,
            "train_seconds": train_seconds, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "score": score, "score_by_guidance": by_guidance, "sampled": sampled,
            "score_on_data": data_score, "on_data": on_data,
            "loss_curve": [sum(losses[i:i + 100]) / len(losses[i:i + 100]) for i in range(0, len(losses), 500)],
            "reversal_defect_0.8": reversal_defect(model, eval_gen),
            "caption_loss_gap": caption_loss_gap(model, torch.Generator().manual_seed(5))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--seconds", type=float, default=240.0, help="CPU training time per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=["rope", "coords"],
                        choices=["rope", "coords", "adaln", "coords+adaln", "hunyuan", "hunyuan-nopool"])
    parser.add_argument("--caption-words", type=int, default=1, help="caption length in tokens: filler words, then "
                        "the direction (default 1: the direction alone)")
    parser.add_argument("--device", default="cpu", help="where the network runs (data and scoring stay on the CPU)")
    parser.add_argument("--task", default="direction", choices=["direction", "colour"],
                        help="what the caption names: the motion direction, or (a control) the square's colour")
    parser.add_argument("--caption-dropout", type=float, default=0.0, help="share of training captions replaced "
                        "by a null token (needed for --guidance)")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance when sampling")
    parser.add_argument("--extra-guidance", type=float, nargs="*", default=[],
                        help="also score samples at these guidance scales (same noise)")
    parser.add_argument("--wrap", action="store_true", help="videos on a torus: the square starts anywhere and "
                        "re-enters on the far side, so only the relative motion tells the direction")
    parser.add_argument("--arrow", default="none", choices=["none", "trail", "accel"],
                        help="an arrow of time in the data: a fading trail behind the square, or a square that "
                        "starts from rest and speeds up (default none: a video reversed is as likely as played)")
    parser.add_argument("--size", type=int, nargs=3, default=[2, 32, 2], metavar=("HEADS", "HEAD_DIM", "LAYERS"),
                        help="the transformer's size (default 2 32 2: width 64)")
    parser.add_argument("--sigma-shift", type=float, default=None, help="draw training noise levels logit-normal, "
                        "shifted towards noise by this factor (as train_small.py with 3); default uniform")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    TASK["name"], TASK["wrap"], TASK["arrow"] = args.task, args.wrap, args.arrow
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            row = train(variant, seed, args.seconds, args.batch, args.lr, args.caption_dropout, args.guidance,
                        args.device, tuple(args.size), args.sigma_shift, tuple(args.extra_guidance),
                        args.caption_words)
            runs.append(row)
            print(json.dumps(row), flush=True)
    result = {"schema": "sta-search/direction-toy/v2",
              "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.processor() or platform.machine(),
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__,
              "threads": torch.get_num_threads(), "args": vars(args), "runs": runs}
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    out = Path(args.out) / f"direction-toy-{args.task}-{args.device.split(':')[0]}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
