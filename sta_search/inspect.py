"""Look at profiles and mask configs: rich tables and matplotlib pictures (``sta-search inspect``).

Profiles: the header, recall per layer x head at one window, mean recall and error per layer for every
shortlist window; pictures: a layer x head recall heatmap and, for one head, the attention mass by tile
offset (one panel per time offset). Mask configs: the summary, density per layer, a window histogram;
pictures: a layer x head density heatmap and the window histogram.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
import numpy as np

from .artifacts import Profile
from .errors import UserError
from .maskconfig import MaskConfig, format_window, parse_window


# ---------------------------------------------------------------------- loading
def load_artifact(path) -> Profile | MaskConfig:
    """A profile folder or a mask config YAML file."""
    path = Path(path)
    if path.is_dir():
        return Profile.load(path)
    if path.is_file():
        return MaskConfig.load(path)
    raise UserError(f"{path} is neither a profile folder nor a mask config file")


def _window_arg(window, profile_or_grid) -> tuple[int, int, int]:
    grid = profile_or_grid.grid if hasattr(profile_or_grid, "grid") else profile_or_grid
    w = parse_window(window, "--window")
    clipped = tuple(min(a, n) for a, n in zip(w, grid))
    if clipped != tuple(w):
        import logging

        logging.getLogger(__name__).warning("--window %s is larger than the %s tile grid: using %s",
                                            ",".join(map(str, w)), tuple(grid), ",".join(map(str, clipped)))
    return clipped  # type: ignore[return-value]


def default_window(profile: Profile) -> tuple[int, int, int]:
    """The window recall tables use when none is given: (3, 3, 3) clipped to the grid (silently: nobody asked
    for a larger one)."""
    return tuple(min(3, n) for n in profile.grid)  # type: ignore[return-value]


def _step_index(profile: Profile, step: int | None) -> int | None:
    if step is None:
        return None
    steps = np.asarray(profile.profile_steps)
    if not 0 <= step < profile.steps:
        raise UserError(f"--step {step} outside [0, {profile.steps})")
    return int(np.argmin(np.abs(steps - step)))


def recall_at(profile: Profile, window, step: int | None = None) -> np.ndarray:
    """``(L, H)`` mean recall at ``window`` (mean over profiled steps, or the profiled step nearest ``step``)."""
    w = _window_arg(window, profile)
    recall = profile.mean_recall().double().numpy()[..., w[0] - 1, w[1] - 1, w[2] - 1]  # (P, L, H)
    index = _step_index(profile, step)
    return recall.mean(axis=0) if index is None else recall[index]


def _check_layer(layer: int | None, num_layers: int) -> None:
    if layer is not None and not 0 <= layer < num_layers:
        raise UserError(f"--layer {layer} outside [0, {num_layers}) (the model has {num_layers} layers)")


def _check_head(head: int | None, num_heads: int) -> None:
    if head is not None and not 0 <= head < num_heads:
        raise UserError(f"--head {head} outside [0, {num_heads}) (the model has {num_heads} heads)")


# ---------------------------------------------------------------------- tables
def summary_table(summary: dict, title: str = "summary"):
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if isinstance(value, float):
            text = f"{value:.4f}"
        elif value is None:
            text = "n/a"
        else:
            text = str(value)
        table.add_row(key, text)
    return table


def _shade(value: float) -> str:
    if value >= 0.9:
        return f"[green]{value:.3f}[/]"
    if value >= 0.7:
        return f"[yellow]{value:.3f}[/]"
    return f"[red]{value:.3f}[/]"


def profile_tables(profile: Profile, *, window=None, layer: int | None = None, step: int | None = None) -> list:
    """Rich renderables describing a profile."""
    from rich.table import Table

    _check_layer(layer, profile.num_layers)
    window = _window_arg(window, profile) if window is not None else default_window(profile)
    geometry = profile.geometry
    info = Table(title="profile", show_header=False, title_justify="left")
    info.add_column("key", style="bold")
    info.add_column("value")
    model = profile.model
    rows = [
        ("model", f"{model['family']} {model['transformer_class']} ({model['num_layers']} layers x {model['num_heads']} heads)"),
        ("source", str(model.get("source", "?"))),
        ("canvas / tile / grid", f"{list(profile.canvas)} / {list(profile.tile)} / {list(profile.grid)}"),
        ("steps / profiled", f"{profile.steps} / {list(profile.profile_steps)}"),
        ("prompts", str(profile.num_prompts)),
        ("shortlist", ", ".join(f"{format_window(w)} ({geometry.density(w):.3f})" for w in profile.error_windows)),
    ]
    for key, value in rows:
        info.add_row(key, value)
    out: list = [info]

    recall = recall_at(profile, window, step)
    where = "mean over profiled steps" if step is None else f"profiled step {profile.profile_steps[_step_index(profile, step)]}"
    heads = Table(title=f"recall at window {format_window(window)} (density {geometry.density(window):.3f}), {where}",
                  title_justify="left")
    heads.add_column("layer", justify="right")
    for h in range(profile.num_heads):
        heads.add_column(f"h{h}", justify="right")
    layers = range(profile.num_layers) if layer is None else [layer]
    for l in layers:
        heads.add_row(str(l), *[_shade(float(v)) for v in recall[l]])
    out.append(heads)

    if profile.num_prompts:
        error = profile.mean_error().double().numpy()  # (P, L, H, K)
        short = profile.mean_shortlist_recall().double().numpy()
        index = _step_index(profile, step)
        error = error.mean(axis=0) if index is None else error[index]
        short = short.mean(axis=0) if index is None else short[index]
        per_layer = Table(title=f"per layer (mean over heads): recall / relative L2 error, {where}", title_justify="left")
        per_layer.add_column("layer", justify="right")
        for w in profile.error_windows:
            per_layer.add_column(format_window(w), justify="right")
        for l in layers:
            per_layer.add_row(str(l), *[f"{short[l, :, k].mean():.3f} / {error[l, :, k].mean():.3f}"
                                        for k in range(len(profile.error_windows))])
        out.append(per_layer)
    return out


def window_histogram(config: MaskConfig, step: int | None = None) -> list[tuple[tuple[int, int, int], int]]:
    """(window, count) over the sparse steps (or one step), most common first."""
    steps = config.sparse_steps if step is None else [step]
    counts = Counter(tuple(int(v) for v in w) for s in steps for w in config.windows[s].reshape(-1, 3))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def mask_tables(config: MaskConfig, *, layer: int | None = None, step: int | None = None) -> list:
    """Rich renderables describing a mask config."""
    from rich.table import Table

    _check_layer(layer, config.num_layers)
    if step is not None and not 0 <= step < config.steps:
        raise UserError(f"--step {step} outside [0, {config.steps})")
    if step is not None and step in config.dense_steps:
        raise UserError(f"--step {step} is a dense step of this config")
    geometry = config.geometry
    info = {
        "model": f"{config.model['family']} {config.model['transformer_class']} "
                 f"({config.num_layers} layers x {config.num_heads} heads)",
        "canvas / tile / grid": f"{list(config.canvas)} / {list(config.tile)} / {list(geometry.grid)}",
        "steps / dense": f"{config.steps} / {list(config.dense_steps)}",
        "density (sparse steps)": config.density(),
        "density (all steps)": config.overall_density(),
    }
    out: list = [summary_table(info, title="mask config")]
    if config.summary:
        out.append(summary_table(config.summary, title="selection summary"))
    if not config.sparse_steps:
        return out
    dens = config.density_table()
    steps = list(config.sparse_steps) if step is None else [step]
    per_layer = Table(title="density per layer" + (" (mean over sparse steps)" if step is None else f" at step {step}"),
                      title_justify="left")
    per_layer.add_column("layer", justify="right")
    per_layer.add_column("density", justify="right")
    per_layer.add_column("min", justify="right")
    per_layer.add_column("max", justify="right")
    per_layer.add_column("windows (most common first)")
    layers = range(config.num_layers) if layer is None else [layer]
    for l in layers:
        d = dens[steps, l]
        common = Counter(format_window(w) for s in steps for w in config.windows[s, l])
        text = ", ".join(f"{w} x{n}" for w, n in common.most_common(4)) + (" ..." if len(common) > 4 else "")
        per_layer.add_row(str(l), f"{d.mean():.3f}", f"{d.min():.3f}", f"{d.max():.3f}", text)
    out.append(per_layer)
    hist = Table(title="window histogram" + ("" if step is None else f" at step {step}"), title_justify="left")
    for name in ("window", "heads", "share", "density"):
        hist.add_column(name, justify="right")
    items = window_histogram(config, step)
    total = sum(n for _, n in items)
    for w, n in items:
        hist.add_row(format_window(w), str(n), f"{n / total:.1%}", f"{geometry.density(w):.3f}")
    out.append(hist)
    return out


# ---------------------------------------------------------------------- pictures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _integer_axes(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def plot_profile(profile: Profile, folder, *, window=None, layer: int = 0, head: int = 0,
                 step: int | None = None) -> list[Path]:
    """Write ``recall_heatmap.png`` and ``offset_mass_L{layer}_H{head}.png`` into ``folder``."""
    _check_layer(layer, profile.num_layers)
    _check_head(head, profile.num_heads)
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    window = _window_arg(window, profile) if window is not None else default_window(profile)
    where = "mean over profiled steps" if step is None else f"step {profile.profile_steps[_step_index(profile, step)]}"
    recall = recall_at(profile, window, step)
    written = []

    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * profile.num_heads + 2), max(3.0, 0.25 * profile.num_layers + 1.5)))
    image = ax.imshow(recall, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    _integer_axes(ax)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"recall at window {format_window(window)} ({where})")
    fig.colorbar(image, ax=ax, label="attention mass inside the window")
    path = folder / "recall_heatmap.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    mass = profile.mean_offset_mass().double().numpy()  # (P, L, H, 2nt-1, 2nh-1, 2nw-1)
    index = _step_index(profile, step)
    mass = mass.mean(axis=0) if index is None else mass[index]
    mass = mass[layer, head]
    nt, nh, nw = profile.grid
    panels = mass.shape[0]
    cols = min(panels, 5)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 1, 2.6 * rows + 0.6), squeeze=False,
                             layout="constrained")
    vmax = float(mass.max()) if mass.size and mass.max() > 0 else 1.0
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= panels:
            ax.axis("off")
            continue
        image = ax.imshow(mass[i], cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest",
                          extent=(-(nw - 1) - 0.5, nw - 1 + 0.5, nh - 1 + 0.5, -(nh - 1) - 0.5))
        _integer_axes(ax)
        ax.set_title(f"dt = {i - (nt - 1)}")
        ax.set_xlabel("dw (tiles)")
        if i % cols == 0:
            ax.set_ylabel("dh (tiles)")
    fig.colorbar(image, ax=axes, label="attention mass")
    fig.suptitle(f"attention mass by tile offset, layer {layer} head {head} ({where})")
    path = folder / f"offset_mass_L{layer}_H{head}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written


def plot_mask(config: MaskConfig, folder) -> list[Path]:
    """Write ``density_heatmap.png`` (layer x head, mean over sparse steps) and ``window_histogram.png``."""
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    sparse = list(config.sparse_steps)
    dens = config.density_table()[sparse].mean(axis=0) if sparse else np.ones((config.num_layers, config.num_heads))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * config.num_heads + 2), max(3.0, 0.25 * config.num_layers + 1.5)))
    image = ax.imshow(dens, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    _integer_axes(ax)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"density (mean over {len(sparse)} sparse steps), overall {config.density():.3f}")
    fig.colorbar(image, ax=ax, label="density")
    path = folder / "density_heatmap.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    items = window_histogram(config) if sparse else []
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(items) + 2), 3.5))
    if items:
        ax.bar(range(len(items)), [n for _, n in items], color="tab:blue")
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([format_window(w) for w, _ in items], rotation=60, ha="right")
    ax.set_ylabel("(step, layer, head) entries")
    ax.set_title("windows of the sparse steps")
    path = folder / "window_histogram.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written


def step_weight_table(folder, profile: Profile):
    """Per profiled step: the measured gain and solver weight (``profile --calibrate-steps``), or None without
    that measurement."""
    from rich.table import Table

    from .sensitivity import load_step_weights

    loaded = load_step_weights(folder, profile)
    if loaded is None:
        return None
    weights, doc = loaded
    table = Table(title=f"step weights ({doc.get('probe', 'probe')}, {doc.get('prompts', '?')} prompt(s); "
                        "select --step-weights auto uses them)")
    for column in ("profiled step", "final error", "attention error", "gain", "weight"):
        table.add_column(column, justify="right")

    def fmt(value):
        return "-" if value is None else f"{value:.4g}"

    for i, step in enumerate(profile.profile_steps):
        table.add_row(str(step), fmt(doc["final_error"][i]), fmt(doc["attention_error"][i]), fmt(doc["gains"][i]),
                      f"{weights[i]:.2f}")
    return table


def inspect_path(path, *, window=None, layer: int | None = None, head: int | None = None, step: int | None = None,
                 plot: str | None = None) -> tuple[list, list[Path]]:
    """Tables (rich renderables) and written pictures for a profile folder or a mask config file."""
    artifact = load_artifact(path)
    pictures: list[Path] = []
    if isinstance(artifact, Profile):
        _check_head(head, artifact.num_heads)
        weights = step_weight_table(path, artifact)  # a broken step_sensitivity.json fails before any work
        tables = profile_tables(artifact, window=window, layer=layer, step=step)
        if weights is not None:
            tables.append(weights)
        if plot:
            pictures = plot_profile(artifact, plot, window=window, layer=layer or 0, head=head or 0, step=step)
    else:
        if window is not None:
            raise UserError("--window applies to profiles; a mask config already fixes its windows")
        tables = mask_tables(artifact, layer=layer, step=step)
        if plot:
            pictures = plot_mask(artifact, plot)
    return tables, pictures


__all__ = [
    "load_artifact",
    "summary_table",
    "profile_tables",
    "mask_tables",
    "window_histogram",
    "plot_profile",
    "plot_mask",
    "inspect_path",
    "recall_at",
]

