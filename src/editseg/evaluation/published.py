"""Published RefCOCO / RefCOCO+ / RefCOCOg numbers, for side-by-side tables.

Every number is copied from the named paper and table, in percent, as printed (typos and all).
Results are keyed ``{method label: {metric: {(dataset, split): value}}}`` where ``metric`` is
``"oIoU"`` or ``"mIoU"``, ``dataset`` is ``"refcoco"``, ``"refcoco+"``, ``"refcocog"`` (UMD split)
or ``"refcocog-google"`` (Google split), and ``split`` is ``"val"``, ``"testA"``, ``"testB"`` or
``"test"`` -- the same names as :class:`editseg.data.refer.RefCOCODataset` (see its
``benchmark`` property). Cells printed as "-" are simply absent.

The main table is :data:`IIE_RIS_TABLE1` (:data:`PUBLISHED` is its ``results``); all tables are in
:data:`TABLES`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_COMPARISON",
    "IIE_RIS_PAPER",
    "IIE_RIS_TABLE1",
    "IIE_RIS_TABLE2",
    "IIE_RIS_TABLE3",
    "IIE_RIS_TABLE_A2",
    "PUBLISHED",
    "REFAM_PAPER",
    "REFAM_TABLE6",
    "REFAM_TABLE7",
    "REF_DIFF_PAPER",
    "REF_DIFF_TABLES_1_2",
    "REF_DIFF_TABLES_4_5",
    "TABLES",
    "Benchmark",
    "PublishedTable",
    "comparison_table",
    "method_rows",
]

Benchmark = tuple[str, str]
Results = dict[str, dict[str, dict[Benchmark, float]]]

IIE_RIS_PAPER = (
    "He, Wang, Wang, Zheng, Xu. Early Semantic Grounding in Image Editing Models for Zero-Shot "
    "Referring Image Segmentation (2026)"
)
REFAM_PAPER = (
    "Kukleva, Simsar, Tonioni, Naeem, Tombari, Lenssen, Schiele. RefAM: Attention Magnets for "
    "Zero-Shot Referral Segmentation (arXiv:2509.22650)"
)
REF_DIFF_PAPER = (
    "Ni, Zhang, Feng, Li, Guo, Zuo. Ref-Diff: Zero-shot Referring Image Segmentation with "
    "Generative Models (arXiv:2308.16777)"
)


@dataclass(frozen=True)
class PublishedTable:
    """One table of published results."""

    key: str
    paper: str
    table: str
    caption: str
    results: Results
    method_info: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    @property
    def methods(self) -> list[str]:
        return list(self.results)

    def get(self, method: str, metric: str, dataset: str, split: str) -> float | None:
        """A published value, or ``None`` if the paper gives none."""
        return self.results.get(method, {}).get(metric, {}).get((dataset, split))


# Column orders as printed, so rows can be typed exactly as they appear in the papers.
_TABLE1_COLUMNS: tuple[Benchmark, ...] = (
    ("refcoco", "val"), ("refcoco", "testA"), ("refcoco", "testB"),
    ("refcoco+", "val"), ("refcoco+", "testA"), ("refcoco+", "testB"),
    ("refcocog", "val"), ("refcocog", "test"),
)  # fmt: skip
_REF_DIFF_COLUMNS: tuple[Benchmark, ...] = _TABLE1_COLUMNS + (("refcocog-google", "val"),)
_VAL_COLUMNS: tuple[Benchmark, ...] = (("refcoco", "val"), ("refcoco+", "val"), ("refcocog", "val"))

_Row = tuple[str, str, Sequence[float | None]]  # (method label, metric, values in column order)


def _build(columns: Sequence[Benchmark], rows: Sequence[_Row]) -> Results:
    results: Results = {}
    for method, metric, values in rows:
        if len(values) != len(columns):
            raise ValueError(f"{method} {metric}: {len(values)} values for {len(columns)} columns")
        cells = {col: float(v) for col, v in zip(columns, values) if v is not None}
        results.setdefault(method, {})[metric] = cells
    return results


# --------------------------------------------------------------------------------------------
# Early Semantic Grounding in Image Editing Models (the method this library implements)
# --------------------------------------------------------------------------------------------

_IIE_OURS_FLUX = "Ours (FLUX.2-klein 9B)"
_IIE_OURS_STEP1X = "Ours (Step1X-Edit 12B)"

IIE_RIS_TABLE1 = PublishedTable(
    key="iie-ris/table1",
    paper=IIE_RIS_PAPER,
    table="Table 1",
    caption="Comparisons with state-of-the-art zero-shot RIS methods on RefCOCO, RefCOCO+, and RefCOCOg.",
    results=_build(
        _TABLE1_COLUMNS,
        [
            ("Pseudo-RIS", "oIoU", (37.33, 43.43, 31.90, 40.19, 46.43, 33.63, 41.63, 43.52)),
            ("VLM-VG", "oIoU", (45.40, 48.00, 41.40, 37.00, 40.70, 30.50, 42.80, 44.10)),
            ("Grad-CAM", "oIoU", (23.44, 23.91, 21.60, 26.67, 27.20, 24.84, 23.00, 23.91)),
            ("MaskCLIP", "oIoU", (20.18, 20.52, 21.30, 22.06, 22.43, 24.61, 23.05, 23.41)),
            ("Global-Local (R50, FreeSOLO)", "oIoU", (24.58, 23.38, 24.35, 25.87, 24.61, 25.61, 30.07, 29.83)),
            ("Global-Local (R50, SAM)", "oIoU", (24.55, 26.00, 21.03, 26.62, 29.99, 22.23, 28.92, 30.48)),
            ("Global-Local (ViT-B, SAM)", "oIoU", (21.71, 24.48, 20.51, 23.70, 28.12, 21.86, 26.57, 28.21)),
            ("Ref-Diff", "oIoU", (35.16, 37.44, 34.50, 35.56, 38.66, 31.40, 38.62, 37.50)),
            ("TAS", "oIoU", (29.53, 30.26, 28.24, 33.21, 38.77, 28.01, 35.84, 36.16)),
            ("SAM 3", "oIoU", (38.77, 37.43, 41.80, 31.62, 32.44, 30.70, 35.04, 35.81)),
            ("HybridGL", "oIoU", (41.81, 44.52, 38.50, 35.74, 41.43, 30.90, 42.47, 42.97)),
            ("RefAM", "oIoU", (46.91, 52.30, 43.88, 38.57, 42.66, 34.90, 45.53, 44.45)),
            (_IIE_OURS_FLUX, "oIoU", (50.13, 52.99, 46.10, 40.17, 43.25, 36.06, 46.90, 46.26)),
            (_IIE_OURS_STEP1X, "oIoU", (53.94, 58.10, 49.60, 44.38, 49.30, 40.06, 51.23, 50.86)),
            ("Pseudo-RIS", "mIoU", (41.05, 48.19, 33.48, 44.33, 51.42, 35.08, 45.99, 46.67)),
            ("VLM-VG", "mIoU", (49.90, 53.10, 46.70, 42.70, 47.30, 36.20, 48.00, 48.50)),
            ("Grad-CAM", "mIoU", (30.22, 31.90, 27.17, 33.96, 25.66, 32.29, 33.05, 32.50)),
            ("MaskCLIP", "mIoU", (25.62, 26.66, 25.17, 27.49, 28.49, 30.47, 30.13, 30.15)),
            ("Global-Local (R50, FreeSOLO)", "mIoU", (26.70, 24.99, 26.48, 28.22, 26.54, 27.86, 33.02, 33.12)),
            ("Global-Local (R50, SAM)", "mIoU", (31.83, 32.93, 28.64, 34.97, 37.11, 30.61, 40.66, 40.94)),
            ("Global-Local (ViT-B, SAM)", "mIoU", (33.12, 36.52, 29.58, 35.29, 39.58, 31.89, 40.08, 40.74)),
            ("Ref-Diff", "mIoU", (37.21, 38.40, 37.19, 37.29, 40.51, 33.01, 44.02, 44.51)),
            ("TAS", "mIoU", (39.84, 41.08, 36.24, 43.63, 49.13, 36.54, 46.62, 46.80)),
            ("CaR", "mIoU", (33.57, 35.36, 30.51, 34.22, 36.03, 31.02, 36.67, 36.57)),
            ("SAM 3", "mIoU", (34.80, 33.36, 38.91, 26.83, 28.30, 25.56, 32.14, 32.08)),
            ("HybridGL", "mIoU", (49.48, 53.37, 45.19, 43.40, 49.13, 37.17, 51.25, 51.59)),
            ("RefAM", "mIoU", (57.24, 59.78, 53.32, 43.59, 47.28, 38.77, 47.11, 48.35)),
            (_IIE_OURS_FLUX, "mIoU", (54.02, 56.09, 50.22, 44.15, 46.72, 40.25, 50.62, 50.47)),
            (_IIE_OURS_STEP1X, "mIoU", (57.56, 60.34, 53.76, 48.50, 52.37, 44.28, 54.52, 54.25)),
        ],
    ),
    method_info={
        "Pseudo-RIS": "ViT-B; SAM, CoCa, CLIP; zero-shot with additional training",
        "VLM-VG": "R101; COCO*, VLM-VG*; zero-shot with additional training (extra data)",
        "Grad-CAM": "R50; SAM, CLIP",
        "MaskCLIP": "R50; SAM, CLIP",
        "Global-Local (R50, FreeSOLO)": "R50; FreeSOLO, CLIP",
        "Global-Local (R50, SAM)": "R50; SAM, CLIP",
        "Global-Local (ViT-B, SAM)": "ViT-B; SAM, CLIP",
        "Ref-Diff": "ViT-B; SAM, SD, CLIP",
        "TAS": "ViT-B; SAM, BLIP2, CLIP",
        "CaR": "ViT-B and ViT-L; CLIP",
        "SAM 3": "PE; SAM 3",
        "HybridGL": "ViT-B; SAM, CLIP",
        "RefAM": "DiT; SAM, FLUX.1-dev (12B)",
        _IIE_OURS_FLUX: "DiT; FLUX.2-klein (9B); the method editseg implements",
        _IIE_OURS_STEP1X: "DiT; Step1X-Edit (12B); the method editseg implements",
    },
    notes=(
        "CaR has no oIoU row. The mIoU row of RefAM is printed with citation [21] (HybridGL's) "
        "instead of [15]; it is RefAM's row (it matches RefAM's own Table 2)."
    ),
)

IIE_RIS_TABLE2 = PublishedTable(
    key="iie-ris/table2",
    paper=IIE_RIS_PAPER,
    table="Table 2",
    caption="Ablation of modules within our framework (Step1X-Edit variant, val splits).",
    results=_build(
        _VAL_COLUMNS,
        [
            ("CAMs", "oIoU", (33.02, 26.83, 32.82)),
            ("CAMs + RAMs", "oIoU", (49.56, 40.23, 47.24)),
            ("CAMs + RAMs + FSL", "oIoU", (53.94, 44.38, 51.23)),
            ("CAMs", "mIoU", (39.44, 32.03, 40.11)),
            ("CAMs + RAMs", "mIoU", (53.36, 43.82, 51.04)),
            ("CAMs + RAMs + FSL", "mIoU", (57.56, 48.50, 54.52)),
        ],
    ),
    notes="Ablations binarise attention maps at a fixed 0.5 threshold (Sec. 4.4).",
)

IIE_RIS_TABLE3 = PublishedTable(
    key="iie-ris/table3",
    paper=IIE_RIS_PAPER,
    table="Table 3",
    caption="Ablation of feature extraction location (Step1X-Edit variant, val splits).",
    results=_build(
        _VAL_COLUMNS,
        [
            ("Block", "oIoU", (52.07, 41.25, 47.93)),
            ("AdaLN", "oIoU", (53.63, 43.24, 49.89)),
            ("MMSA", "oIoU", (53.94, 44.38, 51.23)),
            ("Block", "mIoU", (56.67, 45.83, 53.25)),
            ("AdaLN", "mIoU", (57.34, 47.42, 53.82)),
            ("MMSA", "mIoU", (57.56, 48.50, 54.52)),
        ],
    ),
)

IIE_RIS_TABLE_A2 = PublishedTable(
    key="iie-ris/tableA2",
    paper=IIE_RIS_PAPER,
    table="Table A2",
    caption="Impact of editing instruction refinement (original vs refined expressions).",
    results=_build(
        _VAL_COLUMNS,
        [
            ("HybridGL (original expressions)", "oIoU", (41.81, 35.74, 42.47)),
            ("Ours (Step1X-Edit, original expressions)", "oIoU", (51.91, 41.06, 48.92)),
            ("HybridGL (refined expressions)", "oIoU", (44.14, 38.53, 43.74)),
            ("Ours (Step1X-Edit, refined expressions)", "oIoU", (53.94, 44.38, 51.23)),
            ("HybridGL (original expressions)", "mIoU", (49.48, 43.40, 51.25)),
            ("Ours (Step1X-Edit, original expressions)", "mIoU", (55.79, 44.39, 52.43)),
            ("HybridGL (refined expressions)", "mIoU", (52.55, 46.78, 52.78)),
            ("Ours (Step1X-Edit, refined expressions)", "mIoU", (57.56, 48.50, 54.52)),
        ],
    ),
    notes="The split is not named; the rows match Table 1's val columns, so they are taken as val.",
)

# --------------------------------------------------------------------------------------------
# RefAM's own results
# --------------------------------------------------------------------------------------------

REFAM_TABLE7 = PublishedTable(
    key="refam/table7",
    paper=REFAM_PAPER,
    table="Table 7 (the plain RefAM row is also its Table 2 row)",
    caption="Zero-shot referring segmentation results, with and without inversion.",
    results=_build(
        _TABLE1_COLUMNS,
        [
            ("RefAM", "oIoU", (46.91, 52.30, 43.88, 38.57, 42.66, 34.90, 45.53, 44.45)),
            ("RefAM + Inversion", "oIoU", (47.99, 52.22, 43.99, 40.29, 46.05, 36.71, 47.08, 47.38)),
            ("RefAM", "mIoU", (57.24, 59.78, 53.32, 43.59, 47.28, 38.77, 47.11, 48.35)),
            ("RefAM + Inversion", "mIoU", (59.12, 60.21, 55.02, 46.86, 51.13, 42.30, 49.42, 50.55)),
        ],
    ),
    method_info={"RefAM": "DiT; SAM, FLUX", "RefAM + Inversion": "DiT; SAM, FLUX; rectified-flow inversion"},
    notes="RefAM's Table 2 repeats the IIE-RIS Table 1 baselines; only RefAM's own rows are kept here.",
)

REFAM_TABLE6 = PublishedTable(
    key="refam/table6",
    paper=REFAM_PAPER,
    table="Table 6",
    caption="Ablation on attention magnets (AM), noun-phrase filtering (NP) and spatial bias (SB).",
    results=_build(
        _TABLE1_COLUMNS,
        [
            ("AM + NP + SB", "oIoU", (46.91, 52.30, 43.88, 38.57, 42.66, 34.90, 45.53, 44.45)),
            ("NP + SB", "oIoU", (33.89, 44.66, 34.14, 35.12, 37.69, 33.75, 42.93, 42.44)),
            ("AM + NP", "oIoU", (37.60, 41.81, 34.22, 38.53, 42.60, 35.66, 42.59, 42.75)),
            ("NP", "oIoU", (32.99, 35.22, 31.98, 34.47, 37.05, 33.62, 41.83, 41.00)),
            ("AM", "oIoU", (35.54, 39.80, 32.86, 37.12, 40.89, 34.32, 38.66, 40.90)),
            ("none", "oIoU", (29.14, 31.49, 29.21, 31.61, 34.29, 30.65, 34.09, 35.81)),
        ],
    ),
    notes="The table does not name its metric; the full-model row equals RefAM's oIoU row of Table 2.",
)

# --------------------------------------------------------------------------------------------
# Ref-Diff's own tables
# --------------------------------------------------------------------------------------------

REF_DIFF_TABLES_1_2 = PublishedTable(
    key="ref-diff/tables1-2",
    paper=REF_DIFF_PAPER,
    table="Table 1 (oIoU) and Table 2 (mIoU)",
    caption="Comparison on settings of using a pre-trained segmentor and CLIP.",
    results=_build(
        _REF_DIFF_COLUMNS,
        [
            ("Region Token", "oIoU", (21.71, 20.31, 22.63, 22.61, 20.91, 23.46, 25.52, 25.38, 25.29)),
            ("Cropping", "oIoU", (22.73, 21.11, 23.08, 24.09, 22.42, 23.93, 28.69, 27.51, 27.70)),
            ("Global-Local CLIP", "oIoU", (24.88, 23.61, 24.66, 26.16, 24.90, 25.83, 31.11, 30.96, 30.69)),
            ("SAM-CLIP", "oIoU", (25.23, 25.86, 24.75, 25.64, 27.76, 26.06, 33.75, 34.80, 33.65)),
            ("Ref-Diff", "oIoU", (35.16, 37.44, 34.50, 35.56, 38.66, 31.40, 38.62, 37.50, 37.82)),
            ("TSEG", "mIoU", (25.95, None, None, 22.62, None, None, 23.41, None, None)),
            ("Region Token", "mIoU", (23.43, 22.07, 24.62, 24.51, 22.64, 25.37, 27.57, 27.34, 27.69)),
            ("Cropping", "mIoU", (24.83, 22.58, 25.72, 26.33, 24.06, 26.46, 31.88, 30.94, 31.06)),
            ("Global-Local CLIP", "mIoU", (26.20, 24.94, 26.56, 27.80, 25.64, 27.84, 33.52, 33.67, 33.61)),
            ("SAM-CLIP", "mIoU", (26.33, 25.82, 26.40, 25.70, 28.02, 26.84, 38.75, 38.91, 38.27)),
            ("Ref-Diff", "mIoU", (37.21, 38.40, 37.19, 37.29, 40.51, 33.01, 44.02, 44.51, 44.26)),
        ],
    ),
    method_info={"TSEG": "weakly supervised; only val mIoU published"},
    notes="RefCOCOg columns: val(U) and test(U) are the UMD split, val(G) the Google split.",
)

REF_DIFF_TABLES_4_5 = PublishedTable(
    key="ref-diff/tables4-5",
    paper=REF_DIFF_PAPER,
    table="Table 4 (oIoU) and Table 5 (mIoU)",
    caption="Ablation: generative (G), segmentor (S) and discriminative (D) components.",
    results=_build(
        _VAL_COLUMNS,
        [
            ("Ref-Diff/G", "oIoU", (16.18, 17.23, 20.39)),
            ("Ref-Diff/GS", "oIoU", (26.04, 26.68, 26.84)),
            ("Ref-Diff/DS", "oIoU", (33.64, 34.43, 34.83)),
            ("Ref-Diff", "oIoU", (35.16, 35.56, 38.62)),
            ("TSEG", "mIoU", (25.95, 22.62, 23.41)),
            ("Ref-Diff/G", "mIoU", (21.53, 22.50, 27.03)),
            ("Ref-Diff/GS", "mIoU", (29.82, 30.06, 30.73)),
            ("Ref-Diff/DS", "mIoU", (35.27, 35.72, 41.84)),
            ("Ref-Diff", "mIoU", (37.21, 37.29, 44.02)),
        ],
    ),
    notes="The split is not named; the Ref-Diff rows match the val columns of Tables 1-2.",
)

#: Every encoded table, by key.
TABLES: dict[str, PublishedTable] = {
    table.key: table
    for table in (
        IIE_RIS_TABLE1,
        IIE_RIS_TABLE2,
        IIE_RIS_TABLE3,
        IIE_RIS_TABLE_A2,
        REFAM_TABLE7,
        REFAM_TABLE6,
        REF_DIFF_TABLES_1_2,
        REF_DIFF_TABLES_4_5,
    )
}

#: The main comparison, ``{method: {metric: {(dataset, split): value}}}`` (IIE-RIS Table 1).
PUBLISHED: Results = IIE_RIS_TABLE1.results

#: Rows shown by default next to new results.
DEFAULT_COMPARISON: tuple[str, ...] = ("Ref-Diff", "HybridGL", "RefAM", _IIE_OURS_FLUX, _IIE_OURS_STEP1X)


def comparison_table(
    ours: Mapping[Benchmark, Mapping[str, float]],
    *,
    label: str = "editseg",
    metrics: Sequence[str] = ("oIoU", "mIoU"),
    methods: Sequence[str] = DEFAULT_COMPARISON,
    table: PublishedTable = IIE_RIS_TABLE1,
) -> str:
    """A Markdown table of published rows next to new results.

    ``ours`` maps ``(dataset, split)`` to a metrics summary **in percent**, e.g.
    ``MetricAccumulator.summary(percent=True)``. Columns are the benchmarks in ``ours``.
    """
    columns = list(ours)
    header = "| Metric | Method | " + " | ".join(f"{d} {s}" for d, s in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]

    def cell(value: float | None) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"

    for metric in metrics:
        for method in methods:
            values = [table.get(method, metric, d, s) for d, s in columns]
            lines.append(f"| {metric} | {method} | " + " | ".join(cell(v) for v in values) + " |")
        values = [ours[col].get(metric) for col in columns]
        lines.append(f"| {metric} | **{label}** | " + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(lines)


METHOD_ROWS_FILE = Path(__file__).with_name("published_methods.json")


def method_rows(method: str) -> list[tuple[str, PublishedTable]]:
    """Published ``(row label, table)`` pairs to show beside an evaluation of ``--method`` ``method``
    (from ``published_methods.json``); an unknown method has none."""
    data = json.loads(METHOD_ROWS_FILE.read_text(encoding="utf-8"))
    rows = []
    for entry in data.get(method, []):
        table = TABLES[entry["table"]]
        if entry["row"] not in table.results:
            raise KeyError(f"published_methods.json: {entry['row']!r} is not a row of {entry['table']}")
        rows.append((entry["row"], table))
    return rows
