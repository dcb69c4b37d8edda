"""Markdown for :func:`~.paper_analyses.analyse_tier` results: one table per analysis, each with
its figure (relative links), and the paper's orderings checked against the measurements."""

from __future__ import annotations

import math
import os
from pathlib import Path


def fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def table(title: str, rows: list[dict], tier: dict | None = None) -> str:
    """Rows (label, mIoU, oIoU, RAM PA, CAM PA, note) with the ceilings and chance appended."""
    lines = [f"\n#### {title}\n", "| configuration | mIoU | oIoU | RAM PA | CAM PA | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['label']} | {fmt(row.get('mIoU'))} | {fmt(row.get('oIoU'))} | {fmt(row.get('ram_pa'))} | "
                     f"{fmt(row.get('cam_pa'))} | {row.get('note', '')} |")
    if tier is not None:
        for row in tier["ceilings"]:
            lines.append(f"| {row['label']} | {fmt(row['mIoU'])} | – | – | – | upper bound of any token-level answer |")
        lines.append(f"| chance (point accuracy = mean mask area) | – | – | {fmt(tier['chance_pa'])} | {fmt(tier['chance_pa'])} | |")
    return "\n".join(lines)


def _figure(figures: dict, name: str, markdown_dir: Path | None) -> str:
    if name not in figures:
        return ""
    path = Path(figures[name])
    link = os.path.relpath(path, markdown_dir) if markdown_dir is not None else str(path)
    return f"\n![{name}]({Path(link).as_posix()})\n"


def orderings(tier: dict) -> list[str]:
    """The paper's claims, each with the measured numbers and whether the toy reproduces it."""
    rows = {r["label"]: r for r in tier["headline"]["rows"]}
    cam, ram = rows["CAM only (map > 0.5)"]["mIoU"], rows["RAM only (map > 0.5)"]["mIoU"]
    full = rows["full method: RAM + FSL, paper defaults (tau 0.8)"]["mIoU"]
    verdict = lambda ok: "reproduced" if ok else "**not reproduced**"  # noqa: E731
    out = [f"- Table 2, CAM < RAM < RAM + FSL (mIoU): {fmt(cam)} / {fmt(ram)} / {fmt(full)}: {verdict(cam < ram < full)}."]
    sweep = tier.get("sweep")
    if not sweep:
        return out
    tau = {r["tau"]: r["mIoU"] for r in sweep["tau"]}
    best_tau = max(tau, key=tau.get)
    out.append(f"- Fig. 5, tau 0.8 beats 0.5: {fmt(tau[0.8])} vs {fmt(tau[0.5])}: {verdict(tau[0.8] > tau[0.5])} "
               f"(best tau here {best_tau:.1f}: {fmt(tau[best_tau])}).")
    features = sweep["feature_blocks"]
    best = max(features, key=lambda r: r["mIoU"])
    default = next((r for r in features if r["label"].endswith("(default)")), features[(2 * len(features)) // 3])
    out.append(f"- Fig. 4, FSL best at ~2/3 depth (the default feature block {default['block']}: {fmt(default['mIoU'])}): "
               f"best block here {best['block']} ({fmt(best['mIoU'])}): {verdict(best['block'] == default['block'])}.")
    series: dict[str, dict[int, float]] = {}
    for row in sweep["timestep_rows"]:
        series.setdefault(row["series"], {})[row["timestep"]] = row["mIoU"]
    ram_all = series["RAM, all blocks"]
    first = min(ram_all)
    out.append(f"- Fig. 3, the first step is best (RAM, all blocks, mIoU by step: "
               f"{', '.join(fmt(v) for _, v in sorted(ram_all.items()))}): {verdict(ram_all[first] >= max(ram_all.values()) - 1e-9)}.")
    deep, shallow = series["RAM, single-stream blocks"][first], series["RAM, double-stream blocks"][first]
    out.append(f"- Fig. 3, deep (single-stream) blocks ground better than shallow (double-stream) ones: RAM mIoU "
               f"{fmt(deep)} vs {fmt(shallow)}: {verdict(deep > shallow)}.")
    mass = sweep["attention_mass"]
    strongest = max(mass, key=lambda r: r["contrast"])
    out.append("- Where the grounding lives (target/background ratio of the mean image→prompt attention c_l at step 0, "
               "per block): " + ", ".join(f"block {r['block']} ×{r['contrast']:.2f}" for r in mass)
               + f"; the strongest is block {strongest['block']}.")
    double = sweep.get("double_blocks")
    if double is not None and 0 < double < len(mass):
        mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
        shallow_rows, deep_rows = mass[:double], mass[double:]
        out.append(f"  Mean c_l on target tokens: double-stream blocks {mean(shallow_rows, 'target'):.4f} "
                   f"(background {mean(shallow_rows, 'background'):.4f}), single-stream blocks "
                   f"{mean(deep_rows, 'target'):.4f} (background {mean(deep_rows, 'background'):.4f}).")
    return out


def tier_markdown(tier_name: str, tier: dict, figures: dict | None = None, markdown_dir: Path | None = None) -> str:
    """The Markdown section of one tier."""
    figures = figures or {}
    head = tier["headline"]
    parts = [f"\n### {tier_name} tier\n", "The paper's orderings on this tier:\n", "\n".join(orderings(tier)),
             table(f"{tier_name} tier, n = {tier['n']}: the method, baselines, diagnostics, ceilings (Table 2)", head["rows"], tier),
             "\nFull method: " + ", ".join(f"{k} {v:.3f}" for k, v in head["precision"].items()) + ".",
             _figure(figures, "table2", markdown_dir)]
    if len(head["by_kind"]) > 1:
        parts.append("\n| expression kind | n | mIoU | RAM PA | CAM PA |\n|---|---|---|---|---|")
        parts += [f"| {kind} | {row['n']} | {fmt(row['mIoU'])} | {fmt(row['ram_point_accuracy'])} | {fmt(row['cam_point_accuracy'])} |"
                  for kind, row in head["by_kind"].items()]
    sweep = tier.get("sweep")
    if sweep:
        n = sweep["n"]
        parts += [
            table(f"{tier_name} tier, n = {n}: timestep [Fig. 3] (step k of a {sweep['num_steps']}-step schedule)",
                  sweep["timestep_rows"], sweep), _figure(figures, "fig3-timesteps", markdown_dir),
            _separability_table(tier_name, sweep), _figure(figures, "separability-boxplot", markdown_dir),
            table(f"{tier_name} tier, n = {n}: FSL feature block [Fig. 4], step 0", sweep["feature_blocks"], sweep),
            _heatmap_table(sweep), _figure(figures, "fig4-feature-blocks", markdown_dir),
            table(f"{tier_name} tier, n = {n}: tau [Fig. 5]", sweep["tau"], sweep), _figure(figures, "fig5-tau", markdown_dir),
            table(f"{tier_name} tier, n = {n}: attention blocks summed in eqs. 3-4", sweep["attention_blocks"], sweep),
            _mass_table(tier_name, sweep), _figure(figures, "attention-mass", markdown_dir),
            table(f"{tier_name} tier, n = {n}: prompt-token set", sweep["prompt_tokens"], sweep),
            _figure(figures, "prompt-tokens", markdown_dir),
        ]
    return "\n".join(p for p in parts if p)


def _separability_table(tier_name: str, sweep: dict) -> str:
    s = sweep["settings"]
    lines = [f"\n#### {tier_name} tier, n = {sweep['n']}: separability J(t, l) (appendix A1, eqs. A1-A3)\n",
             f"{s['site']} features, L2-normalised: {s['normalize']}, ground truth to the token grid: {s['grid_rule']}. "
             "Chance: the same features with the sample's foreground labels shuffled.\n",
             "| step | block | n | median J | IQR | chance median |", "|---|---|---|---|---|---|"]
    for row in sweep["separability"]:
        if row["n"]:
            lines.append(f"| {row['timestep']} | {row['block']} | {row['n']} | {fmt(row['median'])} | "
                         f"{fmt(row['q1'])}–{fmt(row['q3'])} | {fmt(row['shuffled'].get('median'))} |")
    return "\n".join(lines)


def _heatmap_table(sweep: dict) -> str:
    heat = sweep["feature_heatmap"]
    lines = ["\nmIoU by feature step t' (rows) and block l' (columns)"
             + (", RAM from step 0:" if sweep["settings"]["fsl_attention"] == "method" else ", RAM from the same step:") + "\n",
             "| t' | " + " | ".join(f"block {b}" for b in heat["blocks"]) + " |", "|---" * (len(heat["blocks"]) + 1) + "|"]
    for t, values in zip(heat["timesteps"], heat["mIoU"]):
        lines.append(f"| {t} | " + " | ".join(fmt(v) for v in values) + " |")
    return "\n".join(lines)


def _mass_table(tier_name: str, sweep: dict) -> str:
    lines = [f"\n#### {tier_name} tier, n = {sweep['n']}: per-block attention mass at step 0\n",
             "Mean image→prompt attention c_l (eq. 3 before the block sum) per clean token.\n",
             "| block | on target | on background | ratio | that block alone: RAM PA | CAM PA |", "|---|---|---|---|---|---|"]
    double = sweep.get("double_blocks")
    for r in sweep["attention_mass"]:
        stream = "" if double is None else (" (double)" if r["block"] < double else " (single)")
        lines.append(f"| {r['block']}{stream} | {r['target']:.4f} | {r['background']:.4f} | {r['contrast']:.2f} | "
                     f"{fmt(r['ram_pa'])} | {fmt(r['cam_pa'])} |")
    lines.append(f"| chance | | | 1.00 | {fmt(sweep['chance_pa'])} | {fmt(sweep['chance_pa'])} |")
    return "\n".join(lines)


def report_markdown(result: dict, figures: dict[str, dict] | None = None, markdown_path: str | Path | None = None,
                    command: str = "") -> str:
    """The whole report: a header, then one section per tier (``figures[tier]``: name → PNG path)."""
    markdown_dir = Path(markdown_path).parent if markdown_path is not None else None
    lines = [f"# The paper's analyses on {result['model']}\n",
             f"Generator v{result['generator_version']}, world seed {result['world_seed']}; {result['architecture']}.",
             "Ceilings (a)/(b) and chance appear in every table and figure (mIoU axes: dashed ceilings; "
             "point-accuracy axes: dotted chance)."]
    if command:
        lines.append(f"\nProduced by `{command}`.")
    for tier_name, tier in result["tiers"].items():
        lines.append(tier_markdown(tier_name, tier, (figures or {}).get(tier_name), markdown_dir))
    return "\n".join(lines) + "\n"
