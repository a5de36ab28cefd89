"""Pretrain `small`'s text encoder on captions alone, to be frozen while the denoiser trains (as Wan's umT5 is).

    python3 bench/pretrain_text_encoder.py --out DIR [--steps 300] [--seed 0]      # ~3 minutes on the 2-core CPU

Why (bench/NOTES.md, session 23): frozen at its random initialisation, the encoder keeps the words apart (28-37%) and
`small` learns to read the axis and size words on one-object scenes, but on its own 2-3-object scenes it reads almost
nothing by step 2,502 (held-out colour 0.62 where a jointly trained encoder reached 1.00): a random encoder's
attention and positions say little about which object a word belongs to, so the denoiser has to bind words to objects
itself. Trained jointly, the encoder binds colours but merges the motion words before the denoiser reads them.

Objective: every token of an object's clause ("a big red triangle moves left and grows") predicts all five of that
object's attributes (size, colour, shape, motion, size change) through linear heads, and every token of the floor,
camera and light clauses predicts that clause's attributes; commas predict nothing. So each token's output carries
its own word and its whole object: a cross-attention query that finds the object's colour finds its motion beside
it. Captions come from `data.sample_scene` with 1-3 objects, plain or not (the ladder's rungs), training captions only.

Reports on held-out captions: attribute accuracy from all clause tokens and from the colour word alone (binding:
the colour word's output names the object's motion), `text_separation` (output change at the swapped motion word /
colour word) and `object_similarity` (cosine between tokens of one object, and of two objects) for this encoder and a
random one. Writes ``DIR/text_encoder/`` (loadable with
`TinyTextEncoder.from_pretrained`, the config of `small`'s encoder) and ``DIR/pretrain_text_encoder.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from sta_search.small import data  # noqa: E402
from sta_search.small.pipeline import build_components  # noqa: E402
from sta_search.small.text import MAX_LENGTH, vocab_map  # noqa: E402
from sta_search.tiny.text import PAD_ID, UNK_ID  # noqa: E402

OBJECT_HEADS = {"size": data.SIZES, "color": data.COLORS, "shape": data.SHAPES, "motion": data.MOTIONS,
                "change": data.SIZE_CHANGES}
SCENE_HEADS = {"floor": data.FLOOR_COLORS, "pattern": data.PATTERNS, "camera": data.CAMERAS, "light": data.LIGHTS}
HEADS = {**OBJECT_HEADS, **SCENE_HEADS}
IGNORE = -100


def clause_targets(scene: data.Scene) -> list[dict[str, int]]:
    """Per clause of ``scene.caption`` (in order), the attributes its tokens predict."""
    clauses = [{name: getattr(obj, name) for name in OBJECT_HEADS} for obj in scene.objects]
    clauses.append({"floor": scene.floor, "pattern": scene.pattern})
    if scene.camera:
        clauses.append({"camera": scene.camera})
    if scene.light:
        clauses.append({"light": scene.light})
    return clauses


def encode(scenes: list[data.Scene]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids ``(n, MAX_LENGTH)``, targets ``(n, MAX_LENGTH, len(HEADS))`` with IGNORE where a token predicts nothing,
    the position of each main object's colour word ``(n,)``): the ids are exactly `encode_words`'s."""
    vocab = vocab_map()
    ids = torch.full((len(scenes), MAX_LENGTH), PAD_ID)
    targets = torch.full((len(scenes), MAX_LENGTH, len(HEADS)), IGNORE)
    colour_at = torch.zeros(len(scenes), dtype=torch.long)
    for row, scene in enumerate(scenes):
        position = 0
        for k, (clause, labels) in enumerate(zip(scene.caption.split(", "), clause_targets(scene))):
            words = ([","] if k else []) + re.findall(r"\w+|[^\w\s]", clause.lower())
            for j, word in enumerate(words):
                if position >= MAX_LENGTH:
                    break
                ids[row, position] = vocab.get(word, UNK_ID)
                if word != ",":
                    for name, value in labels.items():
                        targets[row, position, list(HEADS).index(name)] = value
                if k == 0 and j == 2:  # "a big RED triangle ..."
                    colour_at[row] = position
                position += 1
    return ids, targets, colour_at


def draw(count: int, generator: torch.Generator, held_out: bool) -> list[data.Scene]:
    """``count`` scenes with 1-3 objects (each count equally often), plain or not, held out or for training."""
    scenes = []
    for i in range(count):
        max_objects = data.MAX_OBJECTS[i % len(data.MAX_OBJECTS)]
        scenes += data.sample_scenes(1, generator, held_out=held_out, max_objects=max_objects, plain=bool(i % 2))
    return scenes


class Heads(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(options)) for options in HEADS.values())

    def forward(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        return [head(hidden) for head in self.heads]


def accuracy(encoder, heads, ids, targets, colour_at) -> dict:
    """Per attribute: accuracy over every token that predicts it, and (object attributes) from the main object's
    colour word alone."""
    with torch.no_grad():
        logits = heads(encoder(ids))
    found = {}
    rows = torch.arange(len(ids))
    for i, (name, out) in enumerate(zip(HEADS, logits)):
        wanted = targets[..., i] != IGNORE
        hit = out.argmax(-1) == targets[..., i]
        entry = {"all_tokens": round(float(hit[wanted].float().mean()), 4)}
        if name in OBJECT_HEADS:
            entry["from_colour_word"] = round(float(hit[rows, colour_at].float().mean()), 4)
        found[name] = entry
    return found


def object_similarity(encoder, scenes: list[data.Scene]) -> dict:
    """Mean cosine similarity of the encoder's outputs between tokens of the main object's clause, and between the
    main object's and the second object's tokens (commas left out), over ``scenes`` with two objects or more."""
    scenes = [s for s in scenes if len(s.objects) > 1]
    ids, targets, _ = encode(scenes)
    with torch.no_grad():
        out = torch.nn.functional.normalize(encoder(ids), dim=-1)
    within, across = [], []
    for row, scene in enumerate(scenes):
        words = [w for w in scene.caption.replace(",", " ,").split()]
        first = words.index(",")
        second = words.index(",", first + 1)
        main, other = out[row, :first], out[row, first + 1:second]
        within.append(float((main @ main.T).mean()))
        across.append(float((main @ other.T).mean()))
    return {"within_main_object": round(sum(within) / len(within), 4),
            "main_to_second_object": round(sum(across) / len(across), 4), "captions": len(scenes)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-captions", type=int, default=600)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        parser.error(f"--steps and --batch must be >= 1, got {args.steps} and {args.batch}")
    from small_caption_probe import text_separation

    torch.manual_seed(args.seed)
    encoder = build_components()["text_encoder"]
    random_encoder = build_components()["text_encoder"].eval()  # a random one for comparison (another draw)
    heads = Heads(encoder.config.dim)
    params = list(encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    held_out_gen = torch.Generator().manual_seed(10_000 + args.seed)
    held_ids, held_targets, held_colour = encode(draw(args.eval_captions, held_out_gen, held_out=True))
    separation_scenes = data.sample_scenes(16, torch.Generator().manual_seed(20_000), held_out=True)
    generator = torch.Generator().manual_seed(args.seed)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    log, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps)))  # to 10%
        for group in opt.param_groups:
            group["lr"] = lr
        ids, targets, _ = encode(draw(args.batch, generator, held_out=False))
        logits = heads(encoder.train()(ids))
        loss = sum(loss_fn(out.flatten(0, 1), targets[..., i].flatten()) for i, out in enumerate(logits)) / len(HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == args.steps:
            entry = {"step": step, "loss": round(loss.item(), 5), "seconds": round(time.time() - t0, 1)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
    encoder.eval()
    report = {
        "bench": "pretrain_text_encoder", "schema": "sta-search/pretrain-text-encoder/v1",
        "machine": platform.node(), "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": round(time.time() - t0, 1), "loss": log, "eval_captions": args.eval_captions,
        "held_out_accuracy": accuracy(encoder, heads, held_ids, held_targets, held_colour),
        "text_separation": {"pretrained": text_separation(encoder, separation_scenes),
                            "random": text_separation(random_encoder, separation_scenes)},
        "object_similarity": {"pretrained": object_similarity(encoder, separation_scenes),
                              "random": object_similarity(random_encoder, separation_scenes)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(args.out / "text_encoder"))
    (args.out / "pretrain_text_encoder.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("held_out_accuracy", "text_separation", "object_similarity")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
