"""A real (tiny) two-stage sweep through Ray Tune + Ray Train on CPU: lineage, ASHA, summaries."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweeps.driver import SweepConfig, run_sweep
from vlm_core.config import ConfigError
from vlm_core.data import read_records, split_records


@pytest.fixture(scope="module")
def variants(corpus, tmp_path_factory):
    """Both dataset variants the study names, written in `data build`'s layout (small, no Ray Data needed)."""
    out = tmp_path_factory.mktemp("variants")
    records = [r for r in read_records(corpus / "sharegpt4v_sample.jsonl") if r["image"].startswith("coco/")]
    for name, rows in (("20kUmap", records[:16]), ("10kRandom", records[16:32])):
        train, val = split_records(rows, 0.25)
        (out / name).mkdir()
        for split, part in (("train", train), ("val", val)):
            table = pa.table({"id": [r["id"] for r in part], "image": [r["image"] for r in part],
                              "conversations": [json.dumps(r["conversations"]) for r in part]})
            pq.write_table(table, out / name / f"{split}-00000.parquet")
    return out


def test_stage2_without_stage1_is_a_clear_error(ray_local, variants, corpus, tmp_path):
    cfg = SweepConfig(data=str(variants), images=str(corpus / "images"), preset="tiny", stage="2", paper_ids=[3],
                      out=str(tmp_path))
    with pytest.raises(ConfigError, match="continues s1-20kUmap-nodense-raw-linear-e6-b12, which has no finished"):
        run_sweep(cfg)


def test_two_stage_sweep_with_lineage_and_asha(ray_local, variants, corpus, tmp_path):
    cfg = SweepConfig(data=str(variants), images=str(corpus / "images"), preset="tiny", stage="all",
                      paper_ids=[3, 9], out=str(tmp_path / "sweep"))
    result = run_sweep(cfg)
    lineage = result["lineage"]
    assert set(lineage) == {"s1-20kUmap-nodense-raw-linear-e6-b12", "s1-10kRandom-nodense-raw-linear-e6-b8"}
    for entry in lineage.values():
        assert entry["checkpoint"] and (tmp_path / "sweep").as_posix() in entry["checkpoint"]
        assert entry["best_val_loss"] > 0
    s1, s2 = result["stages"][1], result["stages"][2]
    assert all(r["error"] is None and r["epochs_run"] == 6 for r in s1)
    assert len(s2) == 2 and all(r["error"] is None for r in s2)
    # every stage-2 trial started from its parent's stage-1 checkpoint, recorded in its config
    for r in s2:
        params = json.loads((tmp_path / "sweep" / "stage2" / r["config_id"] / "params.json").read_text())
        parent = params["trial"]["spec"]["parent"]
        assert params["trial"]["worker"]["train"]["init_checkpoint"] == lineage[parent]["checkpoint"]
    # ASHA with one trial at a time and reduction factor 2: the second trial is stopped at a rung unless better
    assert sum(r["stopped_early"] for r in s2) + sum(r["epochs_run"] == 3 for r in s2) == 2
    assert (tmp_path / "sweep" / "trials.json").is_file() and (tmp_path / "sweep" / "lineage.json").is_file()
