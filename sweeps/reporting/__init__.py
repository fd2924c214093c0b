"""Reporting, in one place: every trial's result read once from Tune's records (``results``: trials.json, lineage,
trials.csv), the sweep's report (``sweep_report``: Markdown, CSV, figures), the whole study's report
(``study_report``) and both as one self-contained page (``html_report``: report.html, lineage.svg)."""
