"""The published tables are data files (editseg/assets/published/*.json) read by one loader."""

from __future__ import annotations

import json

from editseg.evaluation.published import DEFAULT_COMPARISON, IIE_RIS_TABLE1, IIE_RIS_TABLE2, TABLES, TABLES_DIR, load_table


def test_every_data_file_is_a_loaded_table_with_one_value_per_column():
    files = sorted(TABLES_DIR.glob("*.json"))
    assert len(files) == len(TABLES) == 8
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["key"] in TABLES
        assert all(len(values) == len(data["columns"]) for _, _, values in data["rows"]), path.name
        assert load_table(path.name).results == TABLES[data["key"]].results


def test_spot_values_as_printed_in_the_papers():
    # IIE-RIS Table 1: FLUX.2-klein oIoU on refcoco val; Step1X-Edit mIoU on refcocog test; RefAM mIoU
    assert IIE_RIS_TABLE1.get("Ours (FLUX.2-klein 9B)", "oIoU", "refcoco", "val") == 50.13
    assert IIE_RIS_TABLE1.get("Ours (Step1X-Edit 12B)", "mIoU", "refcocog", "test") == 54.25
    assert IIE_RIS_TABLE1.get("RefAM", "mIoU", "refcoco", "val") == 57.24
    assert IIE_RIS_TABLE1.get("CaR", "oIoU", "refcoco", "val") is None  # printed as "-"
    assert IIE_RIS_TABLE2.get("CAMs + RAMs", "oIoU", "refcoco+", "val") == 40.23
    assert all(IIE_RIS_TABLE1.get(m, "oIoU", "refcoco", "val") is not None for m in DEFAULT_COMPARISON)
