"""Reporting, in one place: every trial's result read once from Tune's records (``results``: trials.json, lineage,
trials.csv), the sweep's report (``sweep_report``: Markdown, CSV, figures), the whole study's report
(``study_report``) and both as one self-contained page (``html_report``: report.html, lineage.svg)."""

from __future__ import annotations

from .html_report import write_html, write_lineage_svg
from .results import LINEAGE_FILE, TrialResult, read_sweep, read_trials, record_lineage
from .study_report import write_study_report
from .sweep_report import write_report

__all__ = ["LINEAGE_FILE", "TrialResult", "read_sweep", "read_trials", "record_lineage", "write_html",
           "write_lineage_svg", "write_report", "write_study_report"]
