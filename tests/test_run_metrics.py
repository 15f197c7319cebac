"""metrics.json's typed record: the file keeps its shape through a read and a write."""

import json

import pytest

from finetune_pipeline.runs.run_metrics import RunMetrics


def test_a_round_trip_keeps_exactly_the_keys_that_were_set_and_unknown_ones(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"status": "failed", "error": "OutOfMemory: x", "from_a_newer_version": [1, 2]}))
    metrics = RunMetrics.read(path)
    assert (metrics.status, metrics.error, metrics.best_val_score, metrics.history) == ("failed", "OutOfMemory: x",
                                                                                      None, [])
    metrics.record(wall_time_s=3.5)
    metrics.write(path)
    assert json.loads(path.read_text()) == {"status": "failed", "error": "OutOfMemory: x", "wall_time_s": 3.5,
                                            "from_a_newer_version": [1, 2]}


def test_a_field_of_the_wrong_type_is_a_value_error(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"best_val_score": "high"}))
    with pytest.raises(ValueError, match="best_val_score"):
        RunMetrics.read(path)
