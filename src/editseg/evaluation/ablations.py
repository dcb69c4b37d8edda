"""Ablation sweeps and the separability study, in one place for callers of earlier versions.

The code lives in :mod:`.sweeps` (definitions), :mod:`.sweep_run` (runs), :mod:`.sweep_report` (tables, JSON,
plots) and :mod:`.separability` (appendix A1).
"""

from .separability import SEPARABILITY_FORMAT, mask_to_token_grid, plot_separability, separability_study
from .sweep_report import SWEEP_FORMAT, plot_sweep, sweep_table
from .sweep_run import run_sweep
from .sweeps import (
    DEFAULT_TAUS,
    DEFAULT_TIMESTEPS,
    SWEEPS,
    Sweep,
    SweepResult,
    SweepRow,
    SweepSetting,
    build_sweep,
    config_dirname,
    parse_sweep_names,
)

__all__ = [
    "DEFAULT_TAUS",
    "DEFAULT_TIMESTEPS",
    "SEPARABILITY_FORMAT",
    "SWEEPS",
    "SWEEP_FORMAT",
    "Sweep",
    "SweepResult",
    "SweepRow",
    "SweepSetting",
    "build_sweep",
    "config_dirname",
    "mask_to_token_grid",
    "parse_sweep_names",
    "plot_separability",
    "plot_sweep",
    "run_sweep",
    "separability_study",
    "sweep_table",
]
