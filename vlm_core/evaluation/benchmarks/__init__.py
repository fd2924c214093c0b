"""The field's benchmarks as data: ``BENCHMARKS`` (name → :class:`Benchmark`: reader of the published files,
prompt, token budget, scorer), each matching the lmms-eval 0.7.3 task it names. ``yes_no``: POPE, MME;
``open_answer``: VQAv2, TextVQA, GQA, xGQA; ``multiple_choice``: ScienceQA-IMG, MMBench; ``easy_vqa``: the embedded
default's questions. ``predictions`` reads and scores a predictions file (``vlm-sweep score``)."""

from __future__ import annotations

from . import easy_vqa, multiple_choice, open_answer, yes_no  # noqa: F401  (each fills BENCHMARKS)
from .base import (
                   BENCHMARKS,
                   Benchmark,
                   BenchmarkFileError,
                   InlineImage,
                   Question,
                   Scored,
                   budgets_by_name,
                   by_name,
                   locate,
                   split_missing,
                   subset,
)

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkFileError", "InlineImage", "Question", "Scored", "budgets_by_name",
           "by_name", "locate",
           "split_missing", "subset"]
