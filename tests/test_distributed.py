"""Several processes on CPU (gloo): Ulysses STA through diffusers' context parallelism equals single-process
STA with per-head windows; a sharded profile equals the single-process profile, and a killed rank's shard
resumes; bad use fails with a clear UserError on every rank."""

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))

from sta_search.errors import UserError  # noqa: E402

TILE = (1, 4, 4)
# latent (4, 16, 16), patch (1, 2, 2) -> canvas (4, 8, 8) = 256 tokens, grid (4, 2, 2)
LATENT = (1, 4, 4, 16, 16)
# per layer, per head: all different, none full, so a head-index mix-up changes the output
WINDOWS = [[[1, 1, 1], [3, 1, 2], [2, 2, 1], [1, 2, 2]],
           [[4, 1, 1], [1, 1, 2], [3, 2, 2], [2, 1, 1]]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    os.environ.pop("TRITON_INTERPRET", None)
    torch.set_num_threads(1)


def _tiny_wan_transformer(heads: int):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=16,
                                 in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*LATENT, generator=g), torch.tensor([700.0]), torch.randn(1, 5, 16, generator=g)


def _sta_fn(tables, seen=None, ignore_offset=False):
    from sta_search.kernels import sta_attention
    from sta_search.models.parallel import windows_for_call

    def attention(call):
        if seen is not None:
            seen.add((call.layer, call.head_offset, call.local_heads, call.total_heads, call.q.shape[2]))
        windows = tables[call.layer]
        windows = windows[: call.local_heads] if ignore_offset else windows_for_call(windows, call)
        return sta_attention(call.q, call.k, call.v, canvas=call.canvas, tile=TILE, windows=windows,
                             backend="reference")

    return attention


def _ulysses_worker(rank, world, port, seed, result_dir):
    _join(rank, world, port)
    from sta_search.distributed import enable_ulysses, init_from_env, shutdown
    from sta_search.models import hook_attention

    context = init_from_env("cpu")
    result = {"rank": context.rank, "backend": context.backend}
    tables = torch.tensor(WINDOWS, dtype=torch.int32)
    model = _tiny_wan_transformer(heads=4)
    x, t, text = _inputs(seed)
    with torch.no_grad():
        with hook_attention(model, _sta_fn(tables)):
            single = model(x, t, text, return_dict=False)[0]
        enable_ulysses(model, world)
        seen = set()
        with hook_attention(model, _sta_fn(tables, seen)):
            parallel = model(x, t, text, return_dict=False)[0]
        with hook_attention(model, _sta_fn(tables, ignore_offset=True)):
            wrong_mapping = model(x, t, text, return_dict=False)[0]
        with hook_attention(model, lambda call: _sta_fn(tables[:, :3])(call)):
            try:
                model(x, t, text, return_dict=False)
                result["bad_table"] = None
            except UserError as exc:
                result["bad_table"] = str(exc)
    result["max_diff"] = float((parallel - single).abs().max())
    result["scale"] = float(single.abs().max())
    result["wrong_mapping_diff"] = float((wrong_mapping - single).abs().max())
    result["seen"] = sorted(seen)
    try:
        enable_ulysses(_tiny_wan_transformer(heads=3), world)
        result["bad_degree"] = None
    except UserError as exc:
        result["bad_degree"] = str(exc)
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(result))
    shutdown()


def test_windows_for_call_slices_global_heads():
    from sta_search.models import AttentionCall
    from sta_search.models.parallel import windows_for_call

    table = torch.arange(8 * 3).reshape(8, 3)
    q = torch.randn(1, 2, 16, 8)
    call = AttentionCall(step=0, layer=3, q=q, k=q, v=q, canvas=(1, 4, 4), text_len=0, text_first=False,
                         text_mask=None, forward_index=0, head_offset=4, total_heads=8)
    assert torch.equal(windows_for_call(table, call), table[4:6])
    plain = AttentionCall(step=0, layer=0, q=q, k=q, v=q, canvas=(1, 4, 4), text_len=0, text_first=False,
                          text_mask=None, forward_index=0)
    assert plain.total_heads == 2 and plain.head_offset == 0
    assert torch.equal(windows_for_call(table[:2], plain), table[:2])
    assert windows_for_call(table[0], call) is not None and windows_for_call(table[0], call).shape == (3,)
    with pytest.raises(UserError, match="7 heads but layer 3 of the model has 8"):
        windows_for_call(table[:7], call)


def test_ulysses_sta_equals_single_process_sta(tmp_path, seed):
    world = 2
    mp.spawn(_ulysses_worker, args=(world, _free_port(), seed % 2**31, str(tmp_path)), nprocs=world)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for r, result in enumerate(results):
        assert result["backend"] == "gloo" and result["rank"] == r
        # each rank attended over all 256 tokens with its 2 global heads: offsets 0 and 2
        assert result["seen"] == [[layer, 2 * r, 2, 4, 256] for layer in range(2)]
        assert result["max_diff"] <= 1e-5 * max(1.0, result["scale"]), result
        # the check can fail: ignoring the head offset (rank 1 using heads 0-1's windows) changes the output
        assert result["wrong_mapping_diff"] > 1e-3, result
        assert result["bad_table"] and "3 heads but layer 0 of the model has 4" in result["bad_table"]
        assert result["bad_degree"] and "--ulysses 2 does not divide the 3 attention heads" in result["bad_degree"]


def _checks_worker(rank, world, port, out):
    import time

    _join(rank, world, port)
    from sta_search.distributed import checks_on_every_rank, init_from_env, shutdown

    context = init_from_env("cpu")
    try:
        with checks_on_every_rank(context):
            if rank == 1:
                time.sleep(1.0)  # the slow rank: rank 0 must not get ahead and leave it unreported
                raise UserError("--mask: rank 1's bad value")
        message = None
    except UserError as exc:
        message = str(exc)
    Path(out, f"rank{rank}.txt").write_text(message or "passed")
    shutdown()


def test_checks_on_every_rank_agree_before_raising(tmp_path):
    """A UserError on one rank makes every rank raise, each after all ranks finished their checks."""
    mp.spawn(_checks_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    assert (tmp_path / "rank1.txt").read_text() == "--mask: rank 1's bad value"
    assert (tmp_path / "rank0.txt").read_text() == "rank 0: another rank rejected the input (its message is above)"


# ------------------------------------------------------------------------------------- sharded profile
PROMPTS = ("a cat running in the street", "the red car in the city", "a boat on the ocean at night",
           "a bird flying over the forest")


def _settings(model_folder):
    from sta_search.profile import ProfileSettings

    return ProfileSettings(model=str(model_folder), prompts=PROMPTS, steps=2, height=64, width=128, frames=9,
                           seed=5, tile=TILE, device="cpu", dtype="float32")


def _profile_worker(rank, world, port, model_folder, out, kill):
    _join(rank, world, port)
    if kill:
        os.environ["STA_SEARCH_TEST_KILL_RANK_AT"] = kill
    from sta_search.distributed import shutdown, sharded_profile

    sharded_profile(_settings(model_folder), out, resume=True)
    shutdown()


@pytest.fixture(scope="module")
def tiny_wan_folder(tmp_path_factory):
    from tiny_pipes import save_tiny

    return save_tiny("wan", tmp_path_factory.mktemp("tiny") / "wan")


@pytest.mark.slow
def test_sharded_profile_kill_resume_equals_single_process(tiny_wan_folder, tmp_path):
    from sta_search.artifacts import STATS_FILE, Profile
    from sta_search.distributed import prompt_folder
    from sta_search.profile import run_profile

    world, out = 2, tmp_path / "sharded"
    # rank 1 owns prompts 1 and 3; it SIGKILLs itself during prompt 3
    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(_profile_worker, args=(world, _free_port(), str(tiny_wan_folder), str(out), "1:3:1"), nprocs=world)
    kept = prompt_folder(out, 1, world) / STATS_FILE
    assert kept.exists() and not (prompt_folder(out, 3, world) / STATS_FILE).exists()
    assert not (out / STATS_FILE).exists()
    kept_mtime = kept.stat().st_mtime_ns

    mp.spawn(_profile_worker, args=(world, _free_port(), str(tiny_wan_folder), str(out), ""), nprocs=world)
    assert kept.stat().st_mtime_ns == kept_mtime  # the finished prompt of the killed shard was not redone
    sharded = Profile.load(out)

    torch.set_num_threads(1)
    single = run_profile(_settings(tiny_wan_folder), tmp_path / "single")
    assert sharded.header == single.header  # prompts in order, seed, everything
    assert sharded.prompts == PROMPTS
    assert set(sharded.tensors) == set(single.tensors)
    for name, tensor in single.tensors.items():
        torch.testing.assert_close(sharded.tensors[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    assert float(single.tensors["recall_sum"].abs().sum()) > 0


def test_sharded_profile_user_errors(tiny_wan_folder, tmp_path):
    from sta_search.distributed import DistContext, sharded_profile

    out = tmp_path / "p"
    (out / "shards" / "rank0").mkdir(parents=True)
    (out / "shards" / "rank0" / "shard.json").write_text(json.dumps({"world_size": 2, "rank": 0}))
    context = DistContext(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(UserError, match="pass --resume"):
        sharded_profile(_settings(tiny_wan_folder), out, context=context)
    with pytest.raises(UserError, match="world_size: 2 in the shard vs 3 now"):
        sharded_profile(_settings(tiny_wan_folder), out, resume=True, context=context)


# ------------------------------------------------------------------------------------- the command line under torchrun
REPO = Path(__file__).resolve().parent.parent


def _torchrun(*args, nproc=2, timeout=300):
    import subprocess

    env = dict(os.environ, COLUMNS="1000")
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                           "--master-port", str(_free_port()), "-m", "sta_search", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_torchrun_profile_command_equals_single_process(tiny_wan_folder, tmp_path):
    from sta_search.artifacts import Profile
    from sta_search.profile import run_profile

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n")
    settings = _settings(tiny_wan_folder)
    result = _torchrun("profile", tiny_wan_folder, "--prompts", prompts, "--steps", settings.steps, "--height", 64,
                       "--width", 128, "--frames", 9, "--tile", "1,4,4", "--seed", settings.seed, "--out",
                       tmp_path / "p")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("mean recall per layer") == 1  # rank 0 prints the summary
    sharded = Profile.load(tmp_path / "p")
    torch.set_num_threads(1)
    import dataclasses

    single = run_profile(dataclasses.replace(settings, prompts=PROMPTS[:3]), tmp_path / "single")
    assert sharded.header == single.header
    for name, tensor in single.tensors.items():
        torch.testing.assert_close(sharded.tensors[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


def _tiny_mask(loaded, path, heads=None):
    import dataclasses

    import numpy as np

    from sta_search.maskconfig import MaskConfig

    info = loaded.info if heads is None else dataclasses.replace(loaded.info, num_heads=heads)
    config = MaskConfig.uniform(info, loaded.canvas(64, 128, 9), (1, 4, 4), 0, 2, (1, 1, 1))
    windows = np.array(config.windows)
    windows[:, :, :] = [1, 1, 2]
    windows[:, :, 1] = [2, 1, 2]  # head 1 differs from head 0: rank 1 must use head 1's window
    dataclasses.replace(config, windows=windows).save(path)
    return path


@pytest.mark.slow
def test_torchrun_generate_ulysses_equals_single_process(tiny_wan_folder, tmp_path):
    import imageio.v3 as iio

    from sta_search.models import load_model

    loaded = load_model(str(tiny_wan_folder), "cpu", torch.float32)
    mask = _tiny_mask(loaded, tmp_path / "mask.yaml")
    args = ["generate", tiny_wan_folder, "--mask", mask, "--prompt", "a cat in the city", "--height", 64, "--width",
            128, "--frames", 9, "--steps", 2, "--backend", "reference", "--device", "cpu"]
    result = _torchrun(*args, "--out", tmp_path / "two", "--ulysses", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    from sta_search.generate import GenerateSettings, generate

    generate(GenerateSettings(model=str(tiny_wan_folder), mask=str(mask), prompts=("a cat in the city",),
                              out=str(tmp_path / "one"), steps=2, height=64, width=128, frames=9, device="cpu",
                              backend="reference"))
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["videos"][0]["sta"]["attention_calls"].get("sparse", 0) > 0
    (video,) = (tmp_path / "two").glob("*.mp4")
    two = iio.imread(video).astype(np.float32)
    one = iio.imread(tmp_path / "one" / video.name).astype(np.float32)
    assert two.shape == one.shape and float(np.abs(two - one).max()) <= 1.0


@pytest.mark.slow
def test_torchrun_generate_bad_mask_exits_2_on_every_rank(tiny_wan_folder, tmp_path):
    from sta_search.models import load_model

    loaded = load_model(str(tiny_wan_folder), "cpu", torch.float32)
    mask = _tiny_mask(loaded, tmp_path / "mask4.yaml", heads=4)
    result = _torchrun("generate", tiny_wan_folder, "--mask", mask, "--prompt", "a cat", "--height", 64, "--width",
                       128, "--frames", 9, "--steps", 2, "--device", "cpu", "--out", tmp_path / "o", "--ulysses", 2)
    assert result.returncode != 0
    assert result.stderr.count("num_heads: config has 4, model has 2") == 2, result.stderr[-3000:]
    assert result.stderr.count("exitcode  : 2") == 2, result.stderr[-3000:]
