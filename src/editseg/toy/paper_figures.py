"""PNG figures of :func:`~.paper_analyses.analyse_tier` results (matplotlib, Agg backend).

One figure per analysis; every mIoU axis shows the geometry ceilings (a) and (b) as dashed lines
and every point-accuracy axis the chance level (mean mask area) as a dotted line.

    paths = write_figures(result, "docs/images/toy", prefix="basic-")
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

FIGURES = ("table2", "fig3-timesteps", "separability-boxplot", "fig4-feature-blocks", "fig5-tau",
           "prompt-tokens", "attention-mass")


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("The analysis figures need matplotlib: pip install 'editseg[figures]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _references(ax, data: dict, metric: str) -> None:
    """Ceilings on mIoU axes, chance on point-accuracy axes."""
    if metric == "mIoU":
        for style, row in zip(("--", "-."), data["ceilings"]):
            ax.axhline(row["mIoU"], color="0.35", linestyle=style, linewidth=1,
                       label=row["label"].split(":")[0] + f" {row['mIoU']:.2f}")
    else:
        ax.axhline(data["chance_pa"], color="0.35", linestyle=":", linewidth=1.2, label=f"chance {data['chance_pa']:.2f}")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)


def _block_names(data: dict, blocks) -> list[str]:
    """Tick labels: block index and stream (D = double-stream, S = single-stream)."""
    double = data.get("double_blocks")
    return [f"{b}" if double is None else f"{b} ({'D' if b < double else 'S'})" for b in blocks]


def _value(x) -> float:
    return float("nan") if x is None else float(x)


def _bars(ax, labels: list[str], series: dict[str, list], data: dict, metric: str) -> None:
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, [_value(v) for v in values], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, labels, fontsize=8)
    _references(ax, data, metric)


def table2(tier: dict, ax_pair, title: str) -> None:
    rows = {r["label"]: r for r in tier["headline"]["rows"]}
    labels = ["CAM", "RAM", "RAM + FSL"]
    keys = ["CAM only (map > 0.5)", "RAM only (map > 0.5)", "full method: RAM + FSL, paper defaults (tau 0.8)"]
    edit = next(r for r in tier["headline"]["rows"] if r["label"].startswith("baseline: the model's own edit"))
    miou, pa = ax_pair
    _bars(miou, labels + ["own edit"], {"mIoU": [rows[k]["mIoU"] for k in keys] + [edit["mIoU"]],
                                        "oIoU": [rows[k]["oIoU"] for k in keys] + [None]}, tier, "mIoU")
    miou.set_title("Table 2: masks (maps cut at 0.5; FSL at tau 0.8)", fontsize=9)
    _bars(pa, ["CAM", "RAM", "own edit"], {"point accuracy": [rows[keys[0]]["cam_pa"], rows[keys[1]]["ram_pa"], edit["ram_pa"]]},
          tier, "pa")
    pa.set_title("argmax of the map inside the target", fontsize=9)


def fig3(sweep: dict, ax_pair, title: str) -> None:
    colours = {"all": "tab:orange", "double-stream": "tab:green", "single-stream": "tab:blue"}
    series: dict[str, dict[int, dict]] = {}
    for row in sweep["timestep_rows"]:
        series.setdefault(row["series"], {})[row["timestep"]] = row
    steps = sweep["timesteps_probed"]
    for ax, metric, key in ((ax_pair[0], "mIoU", "mIoU"), (ax_pair[1], "pa", None)):
        for name, per_t in series.items():
            if name.startswith("full"):
                if metric == "mIoU":
                    ax.plot(steps, [per_t[t]["mIoU"] for t in steps], color="black", marker="s", label="RAM + FSL (all)")
                continue
            kind, blocks = name.split(", ")[0], name.split(", ")[1].replace(" blocks", "")
            values = [per_t[t][key] if key else per_t[t]["cam_pa" if kind == "CAM" else "ram_pa"] for t in steps]
            ax.plot(steps, values, color=colours[blocks], marker="o", linestyle=":" if kind == "CAM" else "-",
                    label=f"{kind} {blocks}")
        _references(ax, sweep, metric)
        ax.set_xticks(steps)
        ax.set_xlabel(f"probed step of a {sweep['num_steps']}-step schedule")
    ax_pair[0].set_ylabel("mIoU (maps cut at 0.5)")
    ax_pair[1].set_ylabel("point accuracy")
    ax_pair[0].set_title("Fig. 3: timestep x attention blocks (CAM dotted, RAM solid)", fontsize=9)


def separability_box(sweep: dict, ax, title: str) -> None:
    values = np.asarray(sweep["separability_values"], dtype=float)  # samples, timesteps, blocks
    shuffled = np.asarray(sweep["separability_shuffled_values"], dtype=float)
    steps, blocks = sweep["timesteps_probed"], list(range(values.shape[2]))
    width = 0.8 / len(steps)
    cmap = _pyplot().get_cmap("viridis")
    for k, t in enumerate(steps):
        data = [v[np.isfinite(v)] for v in values[:, k, :].T]
        positions = np.arange(len(blocks)) + (k - (len(steps) - 1) / 2) * width
        parts = ax.boxplot(data, positions=positions, widths=width * 0.85, patch_artist=True, showfliers=False)
        for box in parts["boxes"]:
            box.set_facecolor(cmap(k / max(1, len(steps) - 1)))
        ax.plot([], [], color=cmap(k / max(1, len(steps) - 1)), linewidth=6, label=f"step {t}")
    chance = [np.nanmedian(shuffled[:, :, b]) for b in blocks]
    ax.plot(np.arange(len(blocks)), chance, color="0.3", linestyle=":", marker="x",
            label="chance: labels shuffled (median)")
    ax.set_xticks(np.arange(len(blocks)), _block_names(sweep, blocks))
    ax.set_xlabel("block (D double-stream, S single-stream)")
    ax.set_ylabel(f"J(t, l), {sweep['settings'].get('site', 'attn')} features")
    ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("J(t, l): foreground/background separability per block and step (appendix A1)", fontsize=9)


def fig4(sweep: dict, ax_pair, title: str) -> None:
    rows = sweep["feature_blocks"]
    line, heat = ax_pair
    line.plot([r["block"] for r in rows], [r["mIoU"] for r in rows], marker="o", color="tab:purple", label="mIoU")
    line.plot([r["block"] for r in rows], [r["oIoU"] for r in rows], marker="s", color="tab:pink", label="oIoU")
    _references(line, sweep, "mIoU")
    line.set_xticks([r["block"] for r in rows], _block_names(sweep, [r["block"] for r in rows]))
    line.set_xlabel("FSL feature block (step 0; D double-, S single-stream)")
    line.set_title("Fig. 4: FSL feature block", fontsize=9)
    grid = np.asarray(sweep["feature_heatmap"]["mIoU"], dtype=float)
    image = heat.imshow(grid, vmin=0, vmax=1, cmap="magma", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        heat.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    heat.set_xticks(range(grid.shape[1]), _block_names(sweep, sweep["feature_heatmap"]["blocks"]))
    heat.set_yticks(range(grid.shape[0]), sweep["feature_heatmap"]["timesteps"])
    heat.set_xlabel("feature block l'")
    heat.set_ylabel("feature step t'")
    ceiling = sweep["ceilings"][1]["mIoU"]
    heat.set_title(f"mIoU (ceiling (b) {ceiling:.2f}; RAM from step "
                   f"{'0' if sweep['settings'].get('fsl_attention') == 'method' else 't'})", fontsize=9)
    heat.figure.colorbar(image, ax=heat, fraction=0.046)


def fig5(sweep: dict, ax, title: str) -> None:
    rows = sweep["tau"]
    taus = [r["tau"] for r in rows]
    ax.plot(taus, [r["mIoU"] for r in rows], marker="o", color="tab:purple", label="mIoU")
    ax.plot(taus, [r["oIoU"] for r in rows], marker="s", color="tab:pink", label="oIoU")
    for tau in (0.5, 0.8):
        ax.axvline(tau, color="tab:red", alpha=0.3, linewidth=3)
    _references(ax, sweep, "mIoU")
    ax.set_xlabel("tau (region M = RAM > tau); 0.5 and 0.8 marked")
    ax.set_title("Fig. 5: FSL threshold", fontsize=9)


def prompt_tokens(sweep: dict, ax_pair, title: str) -> None:
    rows = sweep["prompt_tokens"]
    labels = [r["label"].replace("prompt tokens: ", "").replace("expression-content", "content words") for r in rows]
    _bars(ax_pair[0], labels, {"mIoU": [r["mIoU"] for r in rows], "oIoU": [r["oIoU"] for r in rows]}, sweep, "mIoU")
    _bars(ax_pair[1], labels, {"RAM PA": [r["ram_pa"] for r in rows], "CAM PA": [r["cam_pa"] for r in rows]}, sweep, "pa")
    ax_pair[0].set_title("prompt-token set of eqs. 3-4 (full method)", fontsize=9)


def attention_mass(sweep: dict, ax_pair, title: str) -> None:
    rows = sweep["attention_mass"]
    blocks = [r["block"] for r in rows]
    x = np.arange(len(blocks))
    mass, pa = ax_pair
    mass.bar(x - 0.2, [r["target"] for r in rows], 0.4, label="target tokens", color="tab:red")
    mass.bar(x + 0.2, [r["background"] for r in rows], 0.4, label="background tokens", color="tab:gray")
    for i, r in enumerate(rows):
        mass.text(i, max(r["target"], r["background"]), f"x{r['contrast']:.1f}", ha="center", va="bottom", fontsize=8)
    mass.set_xticks(x, _block_names(sweep, blocks))
    mass.set_xlabel("block (D double-stream, S single-stream)")
    mass.set_ylabel("mean image->prompt attention c_l per token")
    mass.set_title("per-block attention mass at step 0 (target/background ratio on top)", fontsize=9)
    mass.grid(axis="y", alpha=0.3)
    _bars(pa, _block_names(sweep, blocks), {"RAM PA": [r["ram_pa"] for r in rows],
                                              "CAM PA": [r["cam_pa"] for r in rows]}, sweep, "pa")
    pa.set_title("that block alone: point accuracy", fontsize=9)


_DRAW: dict[str, tuple[str, int, Callable]] = {  # name -> (data part, panels, draw)
    "table2": ("tier", 2, table2),
    "fig3-timesteps": ("sweep", 2, fig3),
    "separability-boxplot": ("sweep", 1, separability_box),
    "fig4-feature-blocks": ("sweep", 2, fig4),
    "fig5-tau": ("sweep", 1, fig5),
    "prompt-tokens": ("sweep", 2, prompt_tokens),
    "attention-mass": ("sweep", 2, attention_mass),
}


def write_figures(tier: dict, out_dir: str | Path, prefix: str = "", caption: str = "", dpi: int = 110) -> dict[str, Path]:
    """Write each figure of one tier's result as ``{prefix}{name}.png``; returns name → path.
    Figures of the sweeps are skipped when the result has none."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (part, panels, draw) in _DRAW.items():
        data = tier if part == "tier" else tier.get("sweep")
        if data is None:
            continue
        wide = name == "separability-boxplot"
        fig, axes = plt.subplots(1, panels, figsize=(11 if wide else 5.2 * panels, 4.2), squeeze=False)
        axes = list(axes[0])
        draw(data, axes if panels > 1 else axes[0], caption)
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="best")
        fig.suptitle(f"{caption} (n = {data['n']})", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{prefix}{name}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths[name] = path
    return paths
