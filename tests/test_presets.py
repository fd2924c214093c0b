"""One record per preset: its models, sweep scale, default backend, the main job's sizes and the free space it needs
live in ``vlm_core/presets.py`` and nowhere else.

    pytest -q tests/test_presets.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sweeps.profiles import BACKENDS
from vlm_core.base.errors import ConfigError
from vlm_core.presets import available_presets, get_preset, preset

ROOT = Path(__file__).resolve().parent.parent


def test_every_preset_has_one_complete_record():
    assert available_presets() == ["local", "local-clip", "local-long", "local-long-clip", "paper", "paper-shaped",
                                   "paper-shaped-2l", "tiny"]
    for name in available_presets():
        record = preset(name)
        assert record.name == name and record.backend in BACKENDS and record.min_free_gb > 0
        assert record.study.eval_questions > 0 and record.study.eval_val_samples > 0
    assert preset("local-long").study.paper_ids == (7,) and preset("local").study.paper_ids is None
    assert preset("local-long").scale.max_steps_per_epoch == 24 and preset("local").scale.stage1_epoch_divisor == 3
    assert (preset("paper").backend, preset("tiny").backend) == ("a100-40g", "cpu")
    assert preset("local-long").model() == get_preset("local") == get_preset("local")  # same models, fresh copies
    assert get_preset("local") is not get_preset("local")
    assert preset("local-long-clip").model() == get_preset("local-clip")  # the CLIP pair: same scales, other encoder
    assert preset("local-long-clip").scale == preset("local-long").scale
    assert preset("local-clip").scale == preset("local").scale
    encoders = (get_preset("local").vision.encoder, get_preset("local-clip").vision.encoder)
    assert encoders == ("efficientnet_lite0", "clip")


def test_an_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match=r"preset: unknown preset 'huge'; choose one of \['local', "):
        preset("huge")


def test_the_lazy_presets_build_nothing_until_their_model_is_asked_for():
    record = preset("paper-shaped").describe(with_model=False)  # no folder materialized for this
    assert record["backend"] == "a100-40g" and "model" not in record


def test_no_module_keeps_its_own_table_of_presets():
    """A dict literal keyed by two or more preset names outside vlm_core/presets.py is a second table to drift."""
    names = set(available_presets())
    tables = []
    for pkg in ("vlm_core", "data_pipeline", "sweeps"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path == ROOT / "vlm_core" / "presets.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Dict):
                    keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                    if len(keys & names) >= 2:
                        tables.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert tables == []
