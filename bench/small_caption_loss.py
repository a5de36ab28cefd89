"""Can `small`'s denoiser tell a motion word from its opposite? Its own loss as a caption discriminator (CPU).

    python3 bench/small_caption_loss.py [--scenes 12] [--out FILE.json]     # ~12 minutes on the 2-core CPU box

For ``--scenes`` held-out scenes, the data generator renders the main object moving left / right / up / down (and
growing / shrinking); the bundled model's flow-matching loss on each video (same noise, noise levels 0.5, 0.8 and
0.95) is compared under the true caption and under the caption with the opposite direction, the other axis, or the
reversed size change. A model that reads the word has a clearly lower loss with the true caption; per comparison
the JSON has the mean relative loss increase of the wrong caption and the fraction of videos where the true one is
lower (0.5: chance). And whether the denoiser commutes with reversing the frames (`symmetries`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from sta_search.small.data import EASES, MAX_OBJECTS  # noqa: E402
from sta_search.tiny.pipeline import denoise  # noqa: E402

DIRECTIONS = ("moves left", "moves right", "moves up", "moves down")
CANVAS = (8, 64, 96)  # frames, height, width px of the probe clips (train_small passes its own smallest canvas)
OPPOSITE = {"moves left": "moves right", "moves right": "moves left", "moves up": "moves down", "moves down": "moves up"}
OTHER_AXIS = {"moves left": "moves up", "moves right": "moves down", "moves up": "moves left", "moves down": "moves right"}
NOISE_LEVELS = (0.5, 0.8, 0.95)


def flow_losses(transformer, text_encoder, videos, captions, sigma: float, seed: int) -> torch.Tensor:
    """Per-video flow-matching loss (``x_s = (1 - s) x0 + s noise``, target ``noise - x0``) under ``captions``."""
    from sta_search.small.text import MAX_LENGTH, encode_words

    device = next(transformer.parameters()).device
    noise = torch.randn(videos.shape, generator=torch.Generator().manual_seed(seed))
    noisy, target = ((1 - sigma) * videos + sigma * noise).to(device), (noise - videos).to(device)
    with torch.no_grad():
        pred = denoise(transformer, noisy, torch.full((len(videos),), sigma * 1000.0, device=device),
                       text_encoder(encode_words(captions, MAX_LENGTH).to(device)))
    return ((pred.float() - target) ** 2).mean(dim=(1, 2, 3, 4)).cpu()


def caption_gaps(transformer, text_encoder, scenes, sigma: float, ease: str = "linear",
                 canvas: tuple[int, int, int] = CANVAS) -> dict[str, list[float]]:
    """Relative loss increase per video when the main object's motion word is replaced by the opposite one or one
    of the other axis, and when its size change is reversed (``scenes`` rendered with each motion and change in
    turn at ``canvas`` (frames, height, width px) with ``ease``, the same noise under both captions). Positive: the
    true caption predicts better."""
    from sta_search.small import data

    def increase(variants, wrong):
        videos = data.render(variants, frames=canvas[0], height=canvas[1], width=canvas[2],
                             generator=torch.Generator().manual_seed(1), ease=ease)
        true = flow_losses(transformer, text_encoder, videos, [s.caption for s in variants], sigma, 2)
        other = flow_losses(transformer, text_encoder, videos, [s.caption for s in wrong], sigma, 2)
        return ((other - true) / true).tolist()

    found = {"opposite direction": [], "other axis": [], "size reversed": []}
    for word in DIRECTIONS:
        variants = [s.with_main(motion=data.MOTIONS.index(word)) for s in scenes]
        for name, table in (("opposite direction", OPPOSITE), ("other axis", OTHER_AXIS)):
            found[name] += increase(variants, [s.with_main(motion=data.MOTIONS.index(table[word])) for s in scenes])
    for change, reversed_change in ((1, 2), (2, 1)):  # grows <-> shrinks
        found["size reversed"] += increase([s.with_main(change=change) for s in scenes],
                                           [s.with_main(change=reversed_change) for s in scenes])
    return found


def symmetries(transformer, text_encoder, scenes, sigmas=(0.3, 0.8), ease: str = "linear",
               canvas: tuple[int, int, int] = CANVAS) -> dict:
    """How far the denoiser is from commuting with a frame reversal, a left-right mirror and a frame shuffle:
    ``|f(g x) - g f(x)| / |f(x)|`` on noised generator videos of ``scenes`` (their own captions). Near 0 for the
    reversal means the model cannot tell a video from itself played backwards (so neither "left" from "right" nor
    "grows" from "shrinks": each is the other reversed)."""
    from sta_search.small import data
    from sta_search.small.text import MAX_LENGTH, encode_words

    device = next(transformer.parameters()).device
    videos = data.render(scenes, frames=canvas[0], height=canvas[1], width=canvas[2],
                         generator=torch.Generator().manual_seed(1), ease=ease).to(device)
    noise = torch.randn(videos.shape, generator=torch.Generator().manual_seed(2)).to(device)
    perm = torch.tensor([3, 0, 6, 1, 7, 2, 5, 4], device=device)
    moves = {"reverse frames": (lambda x: x.flip(2), lambda x: x.flip(2)),
             "mirror left-right": (lambda x: x.flip(4), lambda x: x.flip(4)),
             "shuffle frames": (lambda x: x[:, :, perm], lambda x: x[:, :, torch.argsort(perm)])}
    with torch.no_grad():
        text = text_encoder(encode_words([s.caption for s in scenes], MAX_LENGTH).to(device))
        out = {}
        for sigma in sigmas:
            x = (1 - sigma) * videos + sigma * noise
            t = torch.full((len(scenes),), sigma * 1000.0, device=device)
            f = denoise(transformer, x, t, text)
            out[sigma] = {}
            for name, (move, undo) in moves.items():
                g = denoise(transformer, move(x), t, text)
                out[sigma][name] = round(float((undo(g) - f).norm() / f.norm()), 4)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--folder", type=Path, default=None,
                        help="a small-format pipeline folder (e.g. a train_small checkpoint; default: the bundled one)")
    parser.add_argument("--ease", default="linear", choices=sorted(EASES),
                        help="how the rendered clips' changes progress (sta_search.small.data.EASES): the ease the "
                             "model was trained on")
    parser.add_argument("--max-objects", type=int, default=3, choices=MAX_OBJECTS,
                        help="objects per probe scene, at most (held-out captions; 1 for a single-object model)")
    parser.add_argument("--plain-scenes", action="store_true",
                        help="probe scenes with an untextured floor, a still camera and a steady light")
    args = parser.parse_args(argv)

    import train_small
    from sta_search.small import data

    components = train_small.bundled_components("cpu", args.folder)
    transformer, text_encoder = components["transformer"], components["text_encoder"]
    scenes = [data.parse_caption(c) for c in data.prompt_set(args.scenes, train_small.EVAL_SEED,
                                                                  args.max_objects, args.plain_scenes)]

    symmetry = symmetries(transformer, text_encoder, scenes[:4], ease=args.ease)
    print("symmetry defects:", json.dumps(symmetry), flush=True)
    result = {}
    for sigma in NOISE_LEVELS:
        found = caption_gaps(transformer, text_encoder, scenes, sigma, args.ease)
        result[sigma] = {name: {"mean_rel_loss_increase": round(float(np.mean(v)), 6),
                                "fraction_correct_lower": round(float(np.mean(np.array(v) > 0)), 3), "n": len(v)}
                         for name, v in found.items()}
        print(sigma, json.dumps(result[sigma]), flush=True)
    out = args.out or ROOT / "bench" / "results" / f"small-caption-loss-cpu-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}.json"
    out.write_text(json.dumps({"bench": "small_caption_loss", "model": str(args.folder or "bundled small"),
                               "transformer": type(transformer).__name__, "scenes": args.scenes, "ease": args.ease,
                               "max_objects": args.max_objects, "plain_scenes": args.plain_scenes,
                               "canvas_px": list(CANVAS), "by_noise_level": result,
                               "symmetry_defects_first_4_scenes": symmetry}, indent=1) + "\n")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
