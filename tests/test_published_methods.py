"""Published rows per --method (assets/published_methods.json) and their place in the eval table."""

from __future__ import annotations

import json

from editseg.evaluation.published import METHOD_ROWS_FILE, TABLES, method_rows
from editseg.evaluation.runner import markdown_table


def test_every_entry_names_a_real_row():
    data = json.loads(METHOD_ROWS_FILE.read_text())
    for method in ("early-grounding", "refam", "ref-diff"):
        rows = method_rows(method)
        assert rows and len(rows) == len(data[method])
    assert method_rows("unknown") == []
    row, table = method_rows("ref-diff")[0]
    assert row == "Ref-Diff" and table is TABLES["ref-diff/tables1-2"]
    assert table.get("Ref-Diff", "oIoU", "refcocog-google", "val") == 37.82


def _summary(method, benchmark):
    return {"benchmark": list(benchmark), "num_samples": 3, "metrics": {"oIoU": 30.0, "mIoU": 31.0},
            "settings": {"model": "sd15", "method": method, "config": {}}, "run": {}}


def test_ref_diff_eval_table_shows_its_own_paper():
    table = markdown_table([_summary("ref-diff", ("refcocog-google", "val")), _summary("ref-diff", ("refcoco", "val"))])
    assert "| Ref-Diff | published (Table 1 (oIoU) and Table 2 (mIoU)) | 37.82 | 44.26 | 35.16 | 37.21 |" in table
    assert "| **editseg ref-diff: sd15** | ours | 30.00 | 31.00 | 30.00 | 31.00 |" in table
    assert "arXiv:2308.16777" in table
    # the IIE-RIS Table 1 rows are still there for the RefCOCO column
    assert "| RefAM | published (Table 1) | - | - | 46.91 | 57.24 |" in table


def test_refam_rows():
    table = markdown_table([_summary("refam", ("refcoco", "val"))])
    assert "| RefAM + Inversion | published (Table 7 (the plain RefAM row is also its Table 2 row)) | 47.99 | 59.12 |" in table
