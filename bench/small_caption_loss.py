"""Can `small`'s denoiser tell a motion word from its opposite? Its own loss as a caption discriminator (CPU).

    python3 bench/small_caption_loss.py        # ~12 minutes on the 2-core CPU box; writes the JSON named below

For 12 held-out scenes, the data generator renders the main object moving left / right / up / down (and growing /
shrinking); the bundled model's flow-matching loss on each video (same noise, noise levels 0.5, 0.8, 0.95) is
compared under the true caption and under the caption with the opposite direction, the other axis, or the reversed
size change. A model that reads the word has a clearly lower loss with the true caption.
"""
import sys, dataclasses, json
sys.path.insert(0, "/work/main/bench"); sys.path.insert(0, "/work/main")
import torch, numpy as np
import train_small
from sta_search.small import data, load_small
from sta_search.small.text import encode_words, MAX_LENGTH
torch.manual_seed(0)
pipe = load_small()
tr, te = pipe.transformer.float().eval(), pipe.text_encoder.float().eval()
scenes = [data.parse_caption(c) for c in data.prompt_set(12, train_small.EVAL_SEED)]
M = {w: data.MOTIONS.index(w) for w in ("moves left", "moves right", "moves up", "moves down")}
opp = {"moves left": "moves right", "moves right": "moves left", "moves up": "moves down", "moves down": "moves up"}
other = {"moves left": "moves up", "moves right": "moves down", "moves up": "moves left", "moves down": "moves right"}
def with_motion(s, w): return dataclasses.replace(s, objects=(dataclasses.replace(s.main, motion=M[w]), *s.objects[1:]))
def with_change(s, c): return dataclasses.replace(s, objects=(dataclasses.replace(s.main, change=c), *s.objects[1:]))
def losses(videos, captions, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(videos.shape, generator=g)
    noisy, target = (1 - sigma) * videos + sigma * noise, noise - videos
    with torch.no_grad():
        pred = tr(hidden_states=noisy, timestep=torch.full((len(videos),), sigma * 1000.0),
                  encoder_hidden_states=te(encode_words(captions, MAX_LENGTH)), return_dict=False)[0]
    return ((pred - target) ** 2).mean(dim=(1, 2, 3, 4))
out = {}
for sigma in (0.5, 0.8, 0.95):
    res = {"opposite direction": [], "other axis": [], "size reversed": []}
    for w in M:
        sc = [with_motion(s, w) for s in scenes]
        vids = data.render(sc, frames=8, height=64, width=96, generator=torch.Generator().manual_seed(1))
        base = losses(vids, [s.caption for s in sc], sigma, 2)
        for name, alt in (("opposite direction", opp[w]), ("other axis", other[w])):
            l = losses(vids, [with_motion(s, alt).caption for s in sc], sigma, 2)
            res[name] += ((l - base) / base).tolist()
    for c, rc in ((1, 2), (2, 1)):
        sc = [with_change(s, c) for s in scenes]
        vids = data.render(sc, frames=8, height=64, width=96, generator=torch.Generator().manual_seed(1))
        base = losses(vids, [s.caption for s in sc], sigma, 2)
        l = losses(vids, [with_change(s, rc).caption for s in sc], sigma, 2)
        res["size reversed"] += ((l - base) / base).tolist()
    out[sigma] = {k: {"mean_rel_loss_increase": round(float(np.mean(v)), 4), "fraction_correct_lower": round(float(np.mean(np.array(v) > 0)), 3), "n": len(v)} for k, v in res.items()}
    print(sigma, json.dumps(out[sigma]), flush=True)
import time\nout_path = f"bench/results/small-caption-loss-cpu-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}.json"\njson.dump({"bench": "small_caption_loss", "scenes": 12, "canvas_px": [8, 64, 96], "by_noise_level": out}, open(out_path, "w"), indent=1)\nprint("wrote", out_path)
