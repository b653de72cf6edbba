"""A backup that finds empty what the last verified backup held carries a warning; one
that finds less, or that has nothing to compare with, does not."""

from __future__ import annotations

from workers.policy.emptied import emptied


def manifest(backup_id: str, files: int, rows: int) -> dict:
    return {
        "id": backup_id,
        "volumes": {"uploads": {"files": files, "bytes": files * 1000}},
        "mysql": {"databases": {"medical_system": {"tables": {"patients": {"rows": rows}}}}},
    }


def test_what_was_there_and_is_gone_is_named():
    warnings = emptied(manifest("20240601_020000", 383, 150), manifest("b2", 0, 0))
    assert warnings == [
        "volume uploads holds no files; it held 383 (383000 bytes) in backup 20240601_020000",
        "database medical_system holds no rows; it held 150 in backup 20240601_020000",
    ]


def test_less_or_still_empty_or_nothing_to_compare_with_is_no_warning():
    assert emptied(manifest("b1", 383, 150), manifest("b2", 1, 1)) == []
    assert emptied(manifest("b1", 0, 0), manifest("b2", 0, 0)) == []
    assert emptied(None, manifest("b2", 0, 0)) == []
    assert emptied({"id": "b1"}, manifest("b2", 0, 0)) == []  # an older manifest's shape
