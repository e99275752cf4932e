"""`grm-jax roundtrip`'s library entry point, on one family."""

import json

import pytest

from grm_jax.hf.roundtrip import run_round_trip


def test_round_trip_reports_and_refuses_to_overwrite(tmp_path):
    summary = run_round_trip(tmp_path, families=("qwen2",))
    assert summary["ok"]
    written = json.loads((tmp_path / "round_trip.json").read_text())
    assert written == summary
    (row,) = written["families"]
    assert row["tensors_bitwise_equal"] and row["max_abs_export_vs_hf"] == 0.0
    assert row["max_abs_jax_vs_hf"] < 1e-4
    with pytest.raises(FileExistsError, match="already exists"):
        run_round_trip(tmp_path, families=("qwen2",))
