"""Ablation sweeps (paper §4.4: Tables 2-3, Figs. 3-5): definitions and result types.

    from editseg import Segmenter
    from editseg.evaluation.sweep_run import run_sweep

    seg = Segmenter.from_pretrained("flux2-klein-4b")
    results = run_sweep(seg, dataset, ["modules", "feature_site", "tau"], "runs/ablations", limit=500)
    results["tau"].rows[0].metrics["oIoU"]

**Sweeps.** A sweep is a named list of :class:`SweepSetting` (label, :class:`MethodConfig`) built
from a base config (:func:`build_sweep`; names in :data:`SWEEPS`). ``"<name>*timestep"`` crosses a
sweep with the timesteps (e.g. ``feature_block*timestep`` is Fig. 4's heatmap, and
``attention_blocks*timestep`` Fig. 3's lines).

**Shared forwards.** :func:`run_sweep` calls ``set_image`` once per image and
:meth:`~editseg.api.Segmenter.predict_sweep` with every config of every sweep (split by forward group
and expression batch only to bound memory), so configs that share a
:meth:`~editseg.config.MethodConfig.forward_key` share the transformer forward: modules, feature_site,
feature_block, attention_blocks and tau all cost one forward per expression batch together;
prompt_tokens costs one per token set; a timestep ``t > 0`` costs its forward plus ``t`` denoising
forwards (``2t`` with classifier-free guidance on base models).

**Records and resume.** Each distinct config gets its own folder ``<out>/configs/<name>/`` holding an
ordinary eval records file (``records.jsonl``, same header as :func:`editseg.evaluation.runner.evaluate`
writes, so ``editseg eval`` with the same settings resumes it and ``editseg eval-table`` reads its
``summary.json``). Records are appended after every image; a re-run skips (sample, config) pairs
already recorded. Per sweep, ``<out>/<sweep>.md`` (table), ``<out>/<sweep>.json`` and
``<out>/<sweep>.png`` (plot) are written from all records.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import MethodConfig
from ..text import PROMPT_TOKEN_SETS
from .published import IIE_RIS_TABLE2, IIE_RIS_TABLE3, PublishedTable
from .records import EvaluationError, safe_name

__all__ = [
    "DEFAULT_TAUS",
    "DEFAULT_TIMESTEPS",
    "SWEEPS",
    "Sweep",
    "SweepResult",
    "SweepRow",
    "SweepSetting",
    "build_sweep",
    "config_dirname",
    "parse_sweep_names",
]

SWEEPS = ("modules", "feature_site", "feature_block", "attention_blocks", "tau", "prompt_tokens", "timestep")
DEFAULT_TIMESTEPS: tuple[int, ...] = (0, 5, 10, 15, 20, 25)
DEFAULT_TAUS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_CROSS = re.compile(r"^\s*([a-z_]+)\s*(?:\*|:|×|\bx\b)\s*timestep\s*$")


# -- sweep definitions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSetting:
    """One setting of a sweep: a row of its table, a point/bar/cell of its plot.

    ``category`` is the setting's value on the swept axis as text (e.g. ``"RAM all"``); ``value`` is
    its numeric value on ordered axes (tau, block, timestep); ``timestep`` is set on crossed sweeps.
    ``published`` names the row of the sweep's published table, if any.
    """

    label: str
    config: MethodConfig
    category: str
    value: float | None = None
    timestep: int | None = None
    published: str | None = None
    dashed: bool = False  # drawn dashed in line plots (CAM lines of Fig. 3 are dotted)


@dataclass(frozen=True)
class Sweep:
    """A named list of settings and how to show them."""

    name: str
    axis: str
    settings: tuple[SweepSetting, ...]
    ordered: bool
    caption: str
    published: PublishedTable | None = None

    @property
    def crossed(self) -> bool:
        """Whether the sweep is crossed with timesteps (2-D)."""
        return any(s.timestep is not None for s in self.settings)

    @property
    def configs(self) -> list[MethodConfig]:
        return [s.config for s in self.settings]


def parse_sweep_names(text: str | Sequence[str]) -> list[str]:
    """``"tau,feature_block*timestep"`` → canonical sweep names, validated."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        match = _CROSS.match(item)
        base = match.group(1) if match else item
        if base not in SWEEPS:
            raise EvaluationError(f"unknown sweep {base!r}; choose from {', '.join(SWEEPS)} (append *timestep to cross one with timesteps).")
        if match and base == "timestep":
            raise EvaluationError("timestep*timestep is not a sweep; use timestep.")
        name = f"{base}*timestep" if match else base
        if name not in names:
            names.append(name)
    if not names:
        raise EvaluationError("no sweep named.")
    return names


def _block_list(num_blocks: int, blocks: Sequence[int] | None, stride: int) -> list[int]:
    if blocks is not None:
        chosen = sorted({int(b) for b in blocks})
        bad = [b for b in chosen if not 0 <= b < num_blocks]
        if bad:
            raise EvaluationError(f"feature blocks {bad} do not exist: the model has blocks 0-{num_blocks - 1}.")
        return chosen
    if stride < 1:
        raise EvaluationError(f"block stride must be at least 1, got {stride}.")
    return list(range(0, num_blocks, stride))


def _base_settings(
    name: str,
    base: MethodConfig,
    num_blocks: int,
    blocks: Sequence[int] | None,
    block_stride: int,
    taus: Sequence[float],
    timesteps: Sequence[int],
    num_steps: int,
) -> tuple[str, bool, str, PublishedTable | None, list[SweepSetting]]:
    """(axis, ordered, caption, published table, settings) of an uncrossed sweep."""
    if name == "modules":
        rows = [
            ("CAMs", base.replace(mode="cam", map_threshold=0.5)),
            ("CAMs + RAMs", base.replace(mode="ram", map_threshold=0.5)),
            ("CAMs + RAMs + FSL", base.replace(mode="full")),
        ]
        settings = [SweepSetting(label, config, label, published=label, dashed=label == "CAMs") for label, config in rows]
        return "module", False, "Table 2: modules (CAM / RAM binarised at 0.5; full method)", IIE_RIS_TABLE2, settings
    if name == "feature_site":
        rows = [("Block", "block"), ("AdaLN", "adaln"), ("MMSA", "attn")]
        settings = [
            SweepSetting(f"{label} ({site})", base.replace(mode="full", feature_site=site), label, published=label)
            for label, site in rows
        ]
        return "feature_site", False, "Table 3: feature extraction location", IIE_RIS_TABLE3, settings
    if name == "feature_block":
        settings = [
            SweepSetting(f"block {b}", base.replace(mode="full", feature_block=b), str(b), value=float(b))
            for b in _block_list(num_blocks, blocks, block_stride)
        ]
        return "feature_block", True, "Fig. 4: FSL feature block", None, settings
    if name == "attention_blocks":
        names = {"all": "all", "double": "double (shallow)", "single": "single (deep)"}
        settings = [
            SweepSetting(f"{mode.upper()} {names[sel]}", base.replace(mode=mode, attention_blocks=sel), f"{mode.upper()} {names[sel]}", dashed=mode == "cam")
            for mode in ("cam", "ram")
            for sel in ("all", "double", "single")
        ]
        return "attention_blocks", False, "Fig. 3: blocks summed for CAM/RAM (binarised at map_threshold)", None, settings
    if name == "tau":
        settings = [SweepSetting(f"tau {t:g}", base.replace(mode="full", tau=float(t)), f"{t:g}", value=float(t)) for t in taus]
        return "tau", True, "Fig. 5: RAM threshold tau", None, settings
    if name == "prompt_tokens":
        settings = [SweepSetting(p, base.replace(prompt_tokens=p), p) for p in PROMPT_TOKEN_SETS]
        return "prompt_tokens", False, "Prompt tokens counted in eqs. 3-4", None, settings
    if name == "timestep":
        settings = [
            SweepSetting(f"t={t}", _at_timestep(base, int(t), num_steps), str(t), value=float(t))
            for t in timesteps
        ]
        return "timestep", True, f"Timestep index of a {num_steps}-step schedule", None, settings
    raise EvaluationError(f"unknown sweep {name!r}; choose from {', '.join(SWEEPS)}.")


def _at_timestep(config: MethodConfig, step: int, num_steps: int) -> MethodConfig:
    """``config`` probed at step ``step`` of ``num_steps`` (step 0 is sigma 1 whatever the schedule,
    so it keeps the base config and shares its records)."""
    if step == 0:
        return config.replace(timestep_index=0)
    return config.replace(timestep_index=step, num_inference_steps=num_steps)


def build_sweep(
    name: str,
    base: MethodConfig,
    num_blocks: int,
    *,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    num_steps: int = 28,
    blocks: Sequence[int] | None = None,
    block_stride: int = 1,
    taus: Sequence[float] = DEFAULT_TAUS,
) -> Sweep:
    """The sweep ``name`` (see :data:`SWEEPS`, or ``"<name>*timestep"``) around ``base``.

    ``num_blocks`` is the backbone's depth (the ``feature_block`` sweep covers every
    ``block_stride``-th block, or exactly ``blocks``); ``timesteps`` are indices into a
    ``num_steps`` schedule, used by ``timestep`` and crossed sweeps.
    """
    (canonical,) = parse_sweep_names([name])
    crossed = canonical.endswith("*timestep")
    plain = canonical.split("*")[0]
    bad = [t for t in timesteps if not 0 <= int(t) < num_steps]
    if bad:
        raise EvaluationError(f"timesteps {bad} are outside a {num_steps}-step schedule (0-{num_steps - 1}).")
    axis, ordered, caption, published, settings = _base_settings(
        plain, base, num_blocks, blocks, block_stride, taus, timesteps, num_steps
    )
    if not crossed:
        return Sweep(canonical, axis, tuple(settings), ordered, caption, published)
    crossed_settings = [
        SweepSetting(
            f"{s.label} @ t={t}", _at_timestep(s.config, int(t), num_steps),
            s.category, s.value, int(t), s.published if int(t) == 0 else None, s.dashed,
        )  # fmt: skip
        for s in settings
        for t in timesteps
    ]
    return Sweep(canonical, axis, tuple(crossed_settings), ordered, f"{caption} × timestep ({num_steps}-step schedule)", published)


def config_dirname(config: MethodConfig, default_feature_block: int) -> str:
    """A readable, file-name-safe folder name naming how ``config`` differs from the defaults,
    e.g. ``mode-cam__attention_blocks-double`` (``default`` for none)."""
    reference = MethodConfig(feature_block=default_feature_block).to_dict()
    values = {**config.to_dict(), "feature_block": default_feature_block if config.feature_block is None else config.feature_block}
    parts = []
    for key, value in values.items():
        if value != reference[key]:
            text = "+".join(str(v) for v in value) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(f"{key}-{text}")
    return safe_name("__".join(parts) or "default")


# -- results ---------------------------------------------------------------------------------------


@dataclass
class SweepRow:
    """One evaluated setting: its metrics (percent) over the records in its folder."""

    setting: SweepSetting
    directory: Path
    metrics: dict[str, Any]
    num_samples: int


@dataclass
class SweepResult:
    """A sweep's rows, and where its table, JSON and plot were written."""

    sweep: Sweep
    rows: list[SweepRow]
    benchmark: tuple[str, str]
    model: str
    table_path: Path | None = None
    json_path: Path | None = None
    plot_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metric(self, label: str, name: str = "oIoU") -> Any:
        """A metric of the row labelled ``label``."""
        for row in self.rows:
            if row.setting.label == label:
                return row.metrics.get(name)
        raise KeyError(label)
