"""``sta-search bench``: time the STA kernels against FlexAttention and dense SDPA on this GPU."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .. import options


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        shape: str = typer.Option("hunyuan-720p", "--shape", help="hunyuan-720p, wan-480p or wan-720p."),
        canvas: str = options.triple_option(None, "--canvas", help="Override the canvas, T,H,W in tokens."),
        heads: int = options.positive_option(None, "--heads", help="Override the number of heads.", maximum=4096),
        window: list[str] = typer.Option(None, "--window",
                                         help="t,h,w in tiles, or 'mixed' (per-head, mean volume 27); repeatable."),
        text_len: int = options.non_negative_option(None, "--text-len", help="Joint text tokens after the video "
                                                    "(last 20% padded).", maximum=1 << 20),
        tile: str = options.tile_option(help="Tile t,h,w (default 6,8,8)."),
        head_dim: int = typer.Option(None, "--head-dim", help="Head dim 32, 64 or 128 (default 128); e.g. "
                                     "--head-dim 64 --heads 48 for CogVideoX-like heads at hunyuan-720p's FLOPs."),
        iters: int = options.positive_option(20, "--iters", help="Timed calls of each sparse kernel (median reported).", maximum=1_000_000),
        no_baselines: bool = options.flag(False, "--no-baselines", help="Skip dense cuDNN / FlashAttention-2."),
        out: Path = typer.Option(Path("bench/results"), "--out", help="Folder for the JSON result."),
    ):
        """Median times, effective TFLOP/s and speedups; writes a JSON result under --out.

        Rows (same inputs, one process):
        triton = the Triton kernel, gluon = the warp-specialized Gluon kernel (Hopper only),
        each in tile order, with tile/untile permutes (+permutes) and in place (-natural);
        flex = FlexAttention STA (mask built once); cudnn-dense, fa2-dense = dense SDPA.
        """
        from ..report import check_output_folder

        check_output_folder(out)  # before any work
        from ..benchmark import make_shape, results_table, run_shape, write_results

        windows = [w if w in (None, "mixed") else options.parse_window(w) for w in (window or [None])]
        console = Console()
        shapes = [make_shape(shape, canvas=canvas, heads=heads, window=w, text_len=text_len, tile=tile,
                             head_dim=head_dim) for w in windows]
        results = []
        for s in shapes:
            console.print(f"[bold]{s.name}[/] canvas {s.canvas} heads {s.heads} x d={s.head_dim} windows "
                          f"{s.windows[0] if len(s.windows) == 1 else 'mixed'} text {s.text_len}")
            results.append(run_shape(s, iters=iters, baselines=not no_baselines, log=console.print))
        console.print(results_table(results))
        console.print(f"wrote {write_results(results, out)}")
