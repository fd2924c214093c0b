"""The examples in module docstrings run: every ``>>>`` example of the three packages is a doctest, and no module
docstring keeps a ``python -c`` example that nothing runs.

    pytest -q tests/test_doctests.py
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vlm_core", "data_pipeline", "sweeps")


def _modules() -> list[tuple[str, str]]:
    found = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, f.read_text()))
    return found


WITH_EXAMPLES = [name for name, text in _modules() if ">>> " in text]


def test_the_packages_have_doctests():
    assert len(WITH_EXAMPLES) >= 8, WITH_EXAMPLES


@pytest.mark.parametrize("module", WITH_EXAMPLES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


def test_no_module_docstring_keeps_an_example_nothing_runs():
    assert [name for name, text in _modules() if "python -c " in text] == []
