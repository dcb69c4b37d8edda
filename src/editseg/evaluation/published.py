"""Published RefCOCO / RefCOCO+ / RefCOCOg numbers, for side-by-side tables.

Every number is copied from the named paper and table, in percent, as printed (typos and all).
Results are keyed ``{method label: {metric: {(dataset, split): value}}}`` where ``metric`` is
``"oIoU"`` or ``"mIoU"``, ``dataset`` is ``"refcoco"``, ``"refcoco+"``, ``"refcocog"`` (UMD split)
or ``"refcocog-google"`` (Google split), and ``split`` is ``"val"``, ``"testA"``, ``"testB"`` or
``"test"`` -- the same names as :class:`editseg.data.refer.RefCOCODataset` (see its
``benchmark`` property). Cells printed as "-" are simply absent.

The numbers live in data files, one per table, under ``editseg/assets/published/`` (JSON: key,
paper, table, caption, ``columns`` as printed, ``rows`` as ``[method, metric, [value per column]]``
with ``null`` for "-", ``method_info``, ``notes``); :func:`load_table` reads one. The main table is
:data:`IIE_RIS_TABLE1` (:data:`PUBLISHED` is its ``results``); all tables are in :data:`TABLES`.
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
    "load_table",
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


TABLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "published"


def load_table(filename: str) -> PublishedTable:
    """One published table from its data file in :data:`TABLES_DIR` (e.g. ``"iie-ris-table1.json"``)."""
    data = json.loads((TABLES_DIR / filename).read_text(encoding="utf-8"))
    columns = [tuple(column) for column in data["columns"]]
    results: Results = {}
    for method, metric, values in data["rows"]:
        if len(values) != len(columns):
            raise ValueError(f"{filename}: {method} {metric}: {len(values)} values for {len(columns)} columns")
        results.setdefault(method, {})[metric] = {col: float(v) for col, v in zip(columns, values) if v is not None}
    return PublishedTable(
        key=data["key"], paper=data["paper"], table=data["table"], caption=data["caption"], results=results,
        method_info=dict(data.get("method_info", {})), notes=data.get("notes", ""),
    )  # fmt: skip


IIE_RIS_TABLE1 = load_table("iie-ris-table1.json")
IIE_RIS_TABLE2 = load_table("iie-ris-table2.json")
IIE_RIS_TABLE3 = load_table("iie-ris-table3.json")
IIE_RIS_TABLE_A2 = load_table("iie-ris-tableA2.json")
REFAM_TABLE7 = load_table("refam-table7.json")
REFAM_TABLE6 = load_table("refam-table6.json")
REF_DIFF_TABLES_1_2 = load_table("ref-diff-tables1-2.json")
REF_DIFF_TABLES_4_5 = load_table("ref-diff-tables4-5.json")

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
DEFAULT_COMPARISON: tuple[str, ...] = ("Ref-Diff", "HybridGL", "RefAM", "Ours (FLUX.2-klein 9B)", "Ours (Step1X-Edit 12B)")


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


METHOD_ROWS_FILE = TABLES_DIR.parent / "published_methods.json"


def method_rows(method: str) -> list[tuple[str, PublishedTable]]:
    """Published ``(row label, table)`` pairs to show beside an evaluation of ``--method`` ``method``
    (from ``assets/published_methods.json``); an unknown method has none."""
    data = json.loads(METHOD_ROWS_FILE.read_text(encoding="utf-8"))
    rows = []
    for entry in data.get(method, []):
        table = TABLES[entry["table"]]
        if entry["row"] not in table.results:
            raise KeyError(f"published_methods.json: {entry['row']!r} is not a row of {entry['table']}")
        rows.append((entry["row"], table))
    return rows
