"""The sweep's benchmark evaluation: every checkpoint it names × every benchmark, as Ray tasks across the cluster.

``evaluate_checkpoints`` reads the benchmarks on the driver first (a missing file fails before any task), then runs
one Ray task per checkpoint × benchmark × shard, each asking for the evaluation's resources under the sweep's
backend (:func:`eval_resources`: the smallest hardware profile, ``a100-10g``: inference of the paper's 1B model in
bf16 fits in 10 GB; one CPU on the ``cpu`` backend). A task loads its checkpoint and answers its shard of the
questions (``vlm_core.evaluation.benchmark_eval.answer_benchmark``) into its own answers file under
``OUT/eval/answers/<checkpoint key>-<protocol key>/``; the driver then scores the merged answers. Answers are keyed
by the checkpoint's weights (:func:`~vlm_core.evaluation.benchmark_eval.checkpoint_key`) and the protocol, so a
rerun reuses every answer already given (a complete shard starts no task) and an interrupted one resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_core.base.errors import VlmSweepError
from vlm_core.base.hashing import json_digest
from vlm_core.base.outputs import atomic_write_text
from vlm_core.config import check_field
from vlm_core.evaluation.benchmark_eval import (
    BenchmarkEvalConfig,
    PreparedBenchmark,
    checkpoint_key,
    prepare,
    read_answers,
    score_benchmark,
)

from .profiles import TrialResources, trial_resources

log = logging.getLogger(__name__)

EVAL_PROFILE = "a100-10g"
"""The hardware profile an evaluation task asks for (mapped by the sweep's backend, as trials are)."""


@dataclass
class SweepEvalConfig:
    """``--eval-benchmarks`` and friends: what the sweep evaluates after training."""

    benchmarks: list[str] = field(default_factory=list)
    """Benchmarks to evaluate every kept checkpoint on (empty: none; see ``vlm-sweep eval --benchmark``)."""
    root: str | None = None
    """``--benchmarks DIR``: one folder per benchmark (README: "Benchmarks"); on shared storage for a cluster."""
    limit: int | None = None
    """Questions per benchmark: a seeded subset, the same for every checkpoint (default: all)."""
    stages: list[int] = field(default_factory=lambda: [2])
    """Which stages' checkpoints are evaluated (``--eval-stage 1`` adds the stage-1 projectors)."""
    shards: int = 1
    """Ray tasks per checkpoint × benchmark, each answering every n-th question."""
    files: dict[str, str] = field(default_factory=dict)
    """A benchmark's files folder, instead of under ``root`` (``--benchmark-files NAME=FOLDER,...``)."""
    images: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 16
    budgets: dict[str, int] = field(default_factory=dict)
    """New tokens per answer instead of a benchmark's reference budget (``--benchmark-budgets NAME=N``)."""

    def __post_init__(self) -> None:
        # absolute, as the driver sees them: a Ray task runs in another working directory (and on another node)
        self.root = str(Path(self.root).expanduser().resolve()) if self.root else None
        self.files = {k: str(Path(v).expanduser().resolve()) for k, v in self.files.items()}
        self.images = {k: str(Path(v).expanduser().resolve()) for k, v in self.images.items()}
        check_field(self.shards >= 1, "eval.shards", "must be >= 1")
        check_field(set(self.stages) <= {1, 2}, "eval.stages", "stages are 1 and 2")
        if self.benchmarks:
            self.benchmark_config()  # names, limit and batch size checked now, not after training

    def benchmark_config(self) -> BenchmarkEvalConfig:
        return BenchmarkEvalConfig(list(self.benchmarks), root=self.root, files=dict(self.files),
                                   images=dict(self.images), limit=self.limit, seed=self.seed,
                                   batch_size=self.batch_size, budgets=dict(self.budgets))


def eval_resources(backend: str) -> TrialResources:
    """What one evaluation task asks Ray for under ``backend``."""
    return trial_resources(EVAL_PROFILE, backend)


def _task_options(res: TrialResources) -> dict[str, Any]:
    per = dict(res.resources_per_worker)
    opts: dict[str, Any] = {"num_cpus": per.pop("CPU", 1), "num_gpus": per.pop("GPU", 0)}
    if per:
        opts["resources"] = per
    if res.accelerator_type:
        opts["accelerator_type"] = res.accelerator_type
    return opts


class EvaluationTaskError(VlmSweepError, RuntimeError):
    """An evaluation task saw other questions than the driver planned, or ended without its answers."""


def answer_shard(checkpoint: str, cfg: dict[str, Any], benchmark: str, shard: int, shards: int, path: str,
                 protocol_key: str, memory_fraction: float | None = None) -> int:
    """One Ray task: load the checkpoint, answer every ``shards``-th question of ``benchmark`` from ``shard`` on into
    ``path``. The task reads the benchmark itself; if what it reads is not the protocol the driver planned (other
    files, or images missing on this node), it fails naming both rather than answering other questions. Returns how
    many answers the file holds."""
    from vlm_core.evaluation.benchmark_eval import answer_benchmark
    from vlm_core.training.checkpoint import load_vlm

    bcfg = BenchmarkEvalConfig(**cfg)
    prepared = prepare(bcfg.only(benchmark))[0]
    if (seen := json_digest(prepared.protocol(bcfg.controls), 12)) != protocol_key:
        raise EvaluationTaskError(
            f"evaluation task for {benchmark} on {checkpoint}: this node reads protocol {seen} "
            f"({len(prepared.questions)} questions asked, {len(prepared.missing)} images missing), the driver planned "
            f"{protocol_key}; are the benchmark files and images on storage every node sees at the same path?")
    if memory_fraction:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(memory_fraction)
    model = load_vlm(checkpoint)
    if _cuda():
        model = model.to("cuda")
    answers = answer_benchmark(model, prepared, bcfg.controls, bcfg.batch_size, Path(path), shard=(shard, shards))
    return sum(len(v) for v in answers.values())


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _shard_size(n: int, shard: int, shards: int) -> int:
    return len(range(shard, n, shards))


def plan_tasks(items: Sequence[tuple[str, str]], prepared: Sequence[PreparedBenchmark], cfg: SweepEvalConfig,
               out: Path) -> list[dict[str, Any]]:
    """Every (checkpoint, benchmark, shard) with its answers file and whether those answers are complete."""
    bcfg = cfg.benchmark_config()
    tasks = []
    for config_id, ckpt in items:
        key = checkpoint_key(ckpt)
        for p in prepared:
            pkey = json_digest(p.protocol(bcfg.controls), 12)
            folder = out / "answers" / f"{key}-{pkey}"
            for k in range(cfg.shards):
                path = folder / f"{p.bench.name}-shard{k}of{cfg.shards}.jsonl"
                want = _shard_size(len(p.questions), k, cfg.shards) * (1 + len(bcfg.controls))
                have = sum(len(v) for v in read_answers(path).values())
                tasks.append({"config_id": config_id, "checkpoint": ckpt, "checkpoint_key": key, "benchmark":
                              p.bench.name, "protocol_key": pkey, "shard": k, "path": path,
                              "complete": have >= want})
    return tasks


def evaluate_checkpoints(items: Sequence[tuple[str, str]], cfg: SweepEvalConfig, out: str | Path,
                         backend: str) -> dict[str, dict[str, Any]]:
    """``config_id → benchmark → score_benchmark(...)`` for every ``(config_id, checkpoint)``; writes
    ``OUT/eval/<config_id>.json`` per checkpoint and ``OUT/eval/benchmarks.json`` (all of them)."""
    import ray

    out = Path(out)
    bcfg = cfg.benchmark_config()
    prepared = prepare(bcfg)  # every benchmark file read before any task starts
    tasks = plan_tasks(items, prepared, cfg, out)
    res = eval_resources(backend)
    remote = ray.remote(answer_shard).options(**_task_options(res), max_retries=2)
    todo = [t for t in tasks if not t["complete"]]
    log.info("evaluation: %d tasks (%d reused) asking %s each", len(todo), len(tasks) - len(todo),
             res.resources_per_worker)
    refs = [remote.remote(t["checkpoint"], dataclasses.asdict(bcfg), t["benchmark"], t["shard"], cfg.shards,
                          str(t["path"]), t["protocol_key"], res.cuda_memory_fraction) for t in todo]
    ray.get(refs)
    unfinished = [t for t in plan_tasks(items, prepared, cfg, out) if not t["complete"]]
    if unfinished:
        raise EvaluationTaskError(f"{len(unfinished)} evaluation task(s) ended without all their answers, e.g. "
                                  f"{unfinished[0]['path']}; rerun to resume them")
    results: dict[str, dict[str, Any]] = {}
    by_name = {p.bench.name: p for p in prepared}
    for config_id, ckpt in items:
        mine = [t for t in tasks if t["config_id"] == config_id]
        results[config_id] = {}
        for name, p in by_name.items():
            answers: dict[str, dict[str, str]] = {}
            for t in (t for t in mine if t["benchmark"] == name):
                for cond, got in read_answers(t["path"]).items():
                    answers.setdefault(cond, {}).update(got)
            results[config_id][name] = score_benchmark(p, answers, bcfg.controls) | {
                "checkpoint": ckpt, "checkpoint_key": mine[0]["checkpoint_key"],
                "protocol_key": next(t["protocol_key"] for t in mine if t["benchmark"] == name),
                "answers": [str(t["path"]) for t in mine if t["benchmark"] == name]}
        atomic_write_text(out / f"{config_id}.json", json.dumps(results[config_id], indent=2))
    atomic_write_text(out / "benchmarks.json", json.dumps(results, indent=2))
    return results
