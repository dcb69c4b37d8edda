"""The core JSONL reader shared by eval records and bulk segmentation records (editseg.jsonl)."""

from __future__ import annotations

import pytest

from editseg.jsonl import JsonLineError, read_json_lines


def test_a_cut_short_last_line_is_dropped_and_cut_on_repair(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n\n[2]\n{"b": ')
    lines, dropped = read_json_lines(path)
    assert lines == [(1, {"a": 1}), (3, [2])] and dropped[0] == 4
    assert path.read_bytes().endswith(b'{"b": ')  # untouched without repair
    read_json_lines(path, repair=True)
    assert path.read_bytes() == b'{"a": 1}\n\n[2]\n'
    assert read_json_lines(path) == ([(1, {"a": 1}), (3, [2])], None)


def test_a_missing_final_newline_is_added_on_repair(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}')
    assert read_json_lines(path, repair=True) == ([(1, {"a": 1})], None)
    assert path.read_bytes() == b'{"a": 1}\n'


def test_objects_only_and_damage_before_the_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n[2]\n')
    lines, dropped = read_json_lines(path, objects_only=True)
    assert lines == [(1, {"a": 1})] and dropped == (2, "not a JSON object")
    path.write_bytes(b'{"a": 1}\nnope\n{"c": 3}\n')
    with pytest.raises(JsonLineError) as info:
        read_json_lines(path, repair=True)
    assert info.value.line == 2 and path.read_bytes() == b'{"a": 1}\nnope\n{"c": 3}\n'
    assert read_json_lines(tmp_path / "missing.jsonl") == ([], None)
