"""How equal one process, two data-parallel processes and two FSDP processes are, in numbers: the same tiny stage-2
run (tests/test_distributed.py's: 13 samples, micro-batches of 3, 2 per step, 2 epochs, cosine LR) on gloo, and the
largest differences of per-step loss, LR and gradient norm, validation loss and final (checkpointed) weights.

    python bench/parallel_equality.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> dict:
    from data_pipeline.sample_corpus import write_sample_corpus
    from tests.parallel_harness import checkpoint_weights, train_world
    from vlm_core.config import TrainConfig
    from vlm_core.presets import get_preset

    tmp = Path(tempfile.mkdtemp(prefix="parallel-equality-"))
    write_sample_corpus(tmp / "corpus", n_train_images=60, n_eval_questions=20)
    tcfg = TrainConfig(stage=2, epochs=2, batch_size=3, grad_accum=2, lr=5e-3, scheduler="cosine",
                       warmup_ratio=0.25, seed=3)
    runs = {}
    for name, size, sharding in (("one", 1, "none"), ("ddp", 2, "none"), ("fsdp", 2, "fsdp")):
        cfg = TrainConfig.from_dict({**tcfg.to_dict(), "sharding": sharding})
        records, _, _ = train_world(size, tmp, get_preset("tiny"), cfg, tmp / "corpus", sizes=(13, 7), name=name)
        runs[name] = {"steps": records[0]["steps"], "epochs": records[0]["epochs"],
                      "weights": checkpoint_weights(Path(records[0]["checkpoint"]))}

    def max_diff(a: dict, b: dict) -> dict:
        steps = list(zip(a["steps"], b["steps"]))
        rel = lambda x, y: abs(x - y) / max(abs(x), abs(y), 1e-12)  # noqa: E731
        return {"steps": len(steps),
                "loss_abs": max(abs(x["loss"] - y["loss"]) for x, y in steps),
                "lr_abs": max(abs(x["lr"] - y["lr"]) for x, y in steps),
                "grad_norm_rel": max(rel(x["grad_norm"], y["grad_norm"]) for x, y in steps),
                "val_loss_abs": max(abs(x["val_loss"] - y["val_loss"]) for x, y in zip(a["epochs"], b["epochs"])),
                "weights_abs": max(float((a["weights"][k] - b["weights"][k]).abs().max()) for k in a["weights"])}

    r = {"ddp_vs_one": max_diff(runs["one"], runs["ddp"]), "fsdp_vs_ddp": max_diff(runs["ddp"], runs["fsdp"]),
         "fsdp_vs_one": max_diff(runs["one"], runs["fsdp"])}
    for k, v in r.items():
        print(f"{k:12} " + "  ".join(f"{m} {x:.3g}" if isinstance(x, float) else f"{m} {x}" for m, x in v.items()))
    return r


if __name__ == "__main__":
    print(json.dumps(main()))
