"""The study report's first sentence says what a run's scale can show (steps per trial, samples seen).

    pytest -q tests/test_report_scale.py
"""

from __future__ import annotations

import pandas as pd

from sweeps.reporting.study_report import scale_sentence


def _row(scheduler, loss, steps, samples, epochs=3, stage=1):
    return {"stage": stage, "dataset": "20kUmap", "dense": False, "chat": False, "scheduler": scheduler,
            "epochs": epochs, "batch_size": 12, "best_val_loss": loss, "steps": steps, "samples_seen": samples,
            "epochs_run": epochs}


def test_a_local_run_says_how_little_it_trained_and_which_pairs_coincide():
    table = pd.DataFrame([_row("linear", 2.5, 3, 6), _row("cosine", 2.5, 3, 6),          # a coinciding pair
                          _row("linear", 2.4, 1, 2, epochs=1), _row("cosine", 2.3, 1, 2, epochs=1),  # differs
                          _row("linear", 2.2, 3, 9, stage=2)])
    s = scale_sentence(table)
    assert s.startswith("**What this run can show:** each trial trained 1–3 optimizer steps and saw 2–9 training "
                        "samples (5 trials)")
    assert "not the study's conclusion" in s
    assert "1 of the 2 pairs of configs that differ only in the LR schedule give identical val losses" in s


def test_without_coinciding_pairs_the_sentence_does_not_claim_any():
    table = pd.DataFrame([_row("linear", 2.5, 48, 384), _row("cosine", 2.1, 48, 384)])
    s = scale_sentence(table)
    assert "trained 48 optimizer steps and saw 384 training samples (2 trials)" in s and "pairs" not in s
