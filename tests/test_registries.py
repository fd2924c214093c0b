"""Configs are data: every named choice of a config field is declared in ``vlm_core.config.choices`` and implemented
exactly once where it belongs; a config refuses an unknown name before any model code is imported; model sources
resolve in one place (``vlm_core.assets.sources``).

    pytest -q tests/test_registries.py
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlm_core.assets.sources import model_source
from vlm_core.base.errors import ConfigError, ModelSourceError
from vlm_core.base.registry import Registry
from vlm_core.config import FormatConfig, ProjectorConfig, TrainConfig, VisionConfig, choices


def _implementations():
    from vlm_core.model.conversation import RENDERERS
    from vlm_core.model.projectors import FEATURE_NORMS, PROJECTORS, STI_POOLS
    from vlm_core.model.vision import VISION_ENCODERS
    from vlm_core.training.schedules import SCHEDULES

    return {choices.PROJECTOR: PROJECTORS, choices.FEATURE_NORM: FEATURE_NORMS, choices.STI_POOL: STI_POOLS,
            choices.VISION_ENCODER: VISION_ENCODERS, choices.FORMAT_MODE: RENDERERS, choices.SCHEDULER: SCHEDULES}


def test_every_declared_choice_is_implemented_once_and_nothing_undeclared_is():
    for declared, implemented in _implementations().items():
        assert implemented.declared is declared and implemented.field == declared.field
        assert implemented.unfilled() == [], declared.field
        assert [name for name, _ in implemented.items()] == declared.names()


def test_an_implementing_registry_refuses_an_undeclared_or_repeated_name():
    declared = Registry("x.kind", "kind", {"a": "the first"})
    implemented = Registry.implementing(declared)
    implemented.add("a", 1)
    with pytest.raises(ValueError, match="'b' is not a declared choice of x.kind"):
        implemented.add("b", 2)
    with pytest.raises(ValueError, match="already registered"):
        implemented.add("a", 3)
    with pytest.raises(ConfigError, match=r"x.kind: unknown kind 'c'; choose one of \['a'\]"):
        implemented["c"]
    unfilled = Registry.implementing(Registry("y", "kind", {"a": "", "b": ""}))
    unfilled.add("a", 1)
    assert unfilled.unfilled() == ["b"] and "b" in unfilled
    with pytest.raises(LookupError, match="declared for y but nothing registered it"):
        unfilled["b"]


@pytest.mark.parametrize("make, message", [
    (lambda: VisionConfig(encoder="resnet"), "vision.encoder: unknown vision encoder 'resnet'"),
    (lambda: ProjectorConfig(name="qformer"), "projector.name: unknown projector 'qformer'"),
    (lambda: ProjectorConfig(feature_norm="l2"), "projector.feature_norm: unknown feature norm 'l2'"),
    (lambda: ProjectorConfig(sti_pool="max"), "projector.sti_pool: unknown STI pooling 'max'"),
    (lambda: FormatConfig(mode="vicuna"), "format.mode: unknown mode 'vicuna'"),
    (lambda: TrainConfig(scheduler="step"), "train.scheduler: unknown schedule 'step'"),
    (lambda: TrainConfig(mixed_precision="fp16"), "train.mixed_precision: unknown mixed precision 'fp16'"),
    (lambda: TrainConfig(frozen_dtype="int8"), "train.frozen_dtype: unknown frozen dtype 'int8'"),
])
def test_every_choice_field_refuses_an_unknown_name_naming_the_field_and_choices(make, message):
    with pytest.raises(ConfigError, match=message + r"; choose one of \["):
        make()


def test_configs_check_their_names_without_importing_the_model_code():
    script = ("import sys\n"
              "from vlm_core.config import VLMConfig, ProjectorConfig\n"
              "VLMConfig.from_dict(VLMConfig().to_dict())\n"
              "try:\n    ProjectorConfig(name='qformer')\nexcept ValueError as e:\n    print(e)\n"
              "print(sorted(m for m in sys.modules if m.startswith('vlm_core.') and not m.startswith("
              "('vlm_core.config', 'vlm_core.base'))))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["projector.name: unknown projector 'qformer'; choose one of ['dense_connector', "
                                "'dense_sci', 'dense_sti', 'linear', 'mlp2x_gelu']", "[]"]


def test_model_sources_resolve_in_one_place(tmp_path):
    packaged = {"smollm2": lambda: tmp_path / "converted"}
    assert model_source("tiny", "abc", "lm.source", packaged).kind == "random"
    assert model_source("tiny", "abc", "lm.source").revision is None  # a random init has no revision
    smol = model_source("smollm2", "abc", "lm.source", packaged)
    assert (smol.kind, smol.path(), smol.revision, smol.fingerprint()) == (
        "packaged", str(tmp_path / "converted"), None, {"packaged": "smollm2"})
    hub = model_source("owner/name", "c0ffee", "vision.source")
    assert (hub.kind, hub.path(), hub.revision, hub.fingerprint()) == (
        "hub", "owner/name", "c0ffee", {"hub_id": "owner/name", "revision": "c0ffee"})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    folder = model_source(str(tmp_path / "model"), "c0ffee", "vision.source")
    assert folder.kind == "folder" and folder.revision is None
    assert [f[0] for f in folder.fingerprint()["files"]] == ["config.json"]
    # a packaged name is the field's own: the LLM's `smollm2` means nothing to an encoder that ships none
    with pytest.raises(ModelSourceError, match=r"vision.source 'smollm2' is neither 'tiny', a local folder nor a hub"):
        model_source("smollm2", None, "vision.source")
    with pytest.raises(ModelSourceError, match="is a random init: it has no files"):
        model_source("tiny", None, "lm.source").path()


def test_a_random_source_is_seeded_and_leaves_the_callers_rng_alone():
    import torch

    source = model_source("tiny", None, "lm.source")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = source.load(None, random=lambda: torch.randn(4), seed=7)
    after = torch.rand(1)
    b = source.load(None, random=lambda: torch.randn(4), seed=7)
    assert torch.equal(a, b) and torch.equal(before, after)
