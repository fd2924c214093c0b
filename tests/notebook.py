"""Runs ``notebooks/analyze_sweep.ipynb`` on an experiment folder, as a user would open it on one. A helper for the
tests, not a test module."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "analyze_sweep.ipynb"


def run_analysis_notebook(experiment: str | Path, workdir: Path):
    """Execute the notebook with ``VLM_SWEEP_EXPERIMENT=experiment`` in ``workdir``; returns (the executed notebook,
    the text of every code cell's output)."""
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["VLM_SWEEP_EXPERIMENT"] = str(experiment)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        del os.environ["VLM_SWEEP_EXPERIMENT"]
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    return nb, text
