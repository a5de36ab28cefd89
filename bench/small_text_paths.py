"""Which path carries the caption into a HunyuanVideo `small`: joint attention or the pooled modulation? (CPU)

    python3 bench/small_text_paths.py --folder CHECKPOINT [--compare small] [--scenes 8] [--out FILE.json]

HunyuanVideo reads the text twice: its tokens join the video's in every block's attention (key-padding mask), and
their mean (`sta_search.tiny.pipeline.joint_text_inputs`) modulates every norm through the pooled projection. For
``--scenes`` held-out scenes rendered at 8 x 64 x 96 px and noise levels 0.5 / 0.8 / 0.95, this reports the relative
increase of the flow-matching loss (same noise) when the caption is another scene's, when the pooled text is zeroed,
when every text key but the first word ("a" in every caption) is masked out of attention, and when both are cut; and
per block the share of attention that video queries put on text keys (uniform would be 48 / 3,120 = 1.5%).
``--compare`` adds the caption-swap loss increase of another model folder (e.g. the bundled Wan `small`) as a
yardstick.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

NOISE_LEVELS = (0.5, 0.8, 0.95)
FRAMES, HEIGHT, WIDTH = 8, 64, 96


def load(folder: str):
    """(transformer, text_encoder) in fp32 from a model folder, a training checkpoint or its tars, or ``small``
    (the bundled model)."""
    from train_small import bundled_components, resolve_resume

    path = None if folder == "small" else Path(folder)
    if path is not None and path.is_dir() and not (path / "model_index.json").is_file():
        path = resolve_resume(path, Path(tempfile.mkdtemp(prefix="text_paths_")))
    components = bundled_components("cpu", path)
    return components["transformer"], components["text_encoder"]


def video_tokens(transformer, shape) -> int:
    """Tokens of a pixel video of ``shape`` ``(B, 3, F, H, W)`` in ``transformer``."""
    from sta_search.tiny.pipeline import patch_size

    return math.prod(n // p for n, p in zip(shape[2:], patch_size(transformer)))


def noised(videos, sigma: float):
    """(noisy videos, flow-matching target, timestep) at noise level ``sigma``, the same noise on every call."""
    noise = torch.randn(videos.shape, generator=torch.Generator().manual_seed(2))
    return (1 - sigma) * videos + sigma * noise, noise - videos, torch.full((len(videos),), sigma * 1000.0)


def losses(transformer, text, videos, sigma: float, *, pooled_zero=False, text_keys=True) -> torch.Tensor:
    """Per-video flow-matching loss under text embeddings ``text``, optionally with a text path cut."""
    from sta_search.tiny.pipeline import denoise, is_joint_attention, joint_text_inputs

    noisy, target, timestep = noised(videos, sigma)
    with torch.no_grad():
        if not is_joint_attention(transformer):
            pred = denoise(transformer, noisy, timestep, text)
        else:
            mask, pooled = joint_text_inputs(text)
            if not text_keys:  # all but the caption's first word, "a" in every caption (an all-masked row gives NaN)
                mask = torch.zeros_like(mask)
                mask[:, 0] = True
            pred = transformer(hidden_states=noisy, timestep=timestep, encoder_hidden_states=text,
                               encoder_attention_mask=mask, pooled_projections=pooled * (not pooled_zero),
                               return_dict=False)[0]
    return ((pred - target) ** 2).mean(dim=(1, 2, 3, 4))


def text_attention_share(transformer, text, videos, sigma: float) -> list[float]:
    """Per attention call over video + text keys (one per block), the mean share of softmax mass that video
    queries put on the prompt's text keys."""
    from sta_search.tiny.pipeline import denoise

    n_video, text_tokens = video_tokens(transformer, videos.shape), text.shape[1]
    shares: list[float] = []
    original = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, **kwargs):
        q, k = query, key
        if k.shape[-2] == n_video + text_tokens:
            per_video = []
            for b in range(q.shape[0]):
                logits = q[b, :, :n_video] @ k[b].transpose(-1, -2) * q.shape[-1] ** -0.5
                if attn_mask is not None:
                    logits = logits.masked_fill(~attn_mask[b].expand_as(logits), float("-inf"))
                per_video.append(logits.softmax(-1)[..., n_video:].sum(-1).mean())
            shares.append(float(torch.stack(per_video).mean()))
        return original(query, key, value, attn_mask=attn_mask, **kwargs)

    noisy, _, timestep = noised(videos, sigma)
    torch.nn.functional.scaled_dot_product_attention = recording
    try:
        with torch.no_grad():
            denoise(transformer, noisy, timestep, text)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    return [round(s, 4) for s in shares]


def main(argv=None) -> int:
    from train_small import EVAL_SEED

    from sta_search.small import data
    from sta_search.small.text import MAX_LENGTH, encode_words

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True, help="HunyuanVideo small: model folder, checkpoint or its tars")
    ap.add_argument("--compare", default=None, help="another model (folder or 'small') for the caption-swap yardstick")
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.time()
    scenes = [data.parse_caption(c) for c in data.prompt_set(args.scenes, EVAL_SEED)]
    videos = data.render(scenes, frames=FRAMES, height=HEIGHT, width=WIDTH, generator=torch.Generator().manual_seed(1))
    ids = encode_words([s.caption for s in scenes], MAX_LENGTH)
    result = {"folder": args.folder, "scenes": [s.caption for s in scenes], "canvas": [FRAMES, HEIGHT, WIDTH],
              "torch": torch.__version__, "device": "cpu"}
    transformer, text_encoder = load(args.folder)
    with torch.no_grad():
        text = text_encoder(ids)
    result["loss_increase"] = {}
    for sigma in NOISE_LEVELS:
        true = losses(transformer, text, videos, sigma)
        cuts = {"other scene's caption": losses(transformer, text.roll(1, 0), videos, sigma),
                "pooled text zeroed": losses(transformer, text, videos, sigma, pooled_zero=True),
                "text keys masked but the first": losses(transformer, text, videos, sigma, text_keys=False),
                "both cut": losses(transformer, text, videos, sigma, pooled_zero=True, text_keys=False)}
        result["loss_increase"][str(sigma)] = {name: round(float(((cut - true) / true).mean()), 5)
                                               for name, cut in cuts.items()}
    result["video_to_text_attention_share"] = {str(s): text_attention_share(transformer, text, videos, s)
                                               for s in (0.5, 0.95)}
    result["uniform_share"] = round(MAX_LENGTH / (video_tokens(transformer, videos.shape) + MAX_LENGTH), 4)
    if args.compare:
        other, other_text_encoder = load(args.compare)
        with torch.no_grad():
            other_text = other_text_encoder(ids)
        swap = {}
        for sigma in NOISE_LEVELS:
            true = losses(other, other_text, videos, sigma)
            swapped = losses(other, other_text.roll(1, 0), videos, sigma)
            swap[str(sigma)] = round(float(((swapped - true) / true).mean()), 5)
        result["compare"] = {"folder": args.compare, "other scene's caption": swap}
    result["seconds"] = round(time.time() - t0, 1)
    text_out = json.dumps(result, indent=1)
    print(text_out)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text_out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
