"""``vlm-sweep eval CHECKPOINT --benchmark pope,gqa,...``: a checkpoint's answers to the field's benchmarks, scored
as the field scores them, with text-only controls.

Every benchmark named is read (and its ``--limit`` subset picked) before the model loads, so a missing file fails
first. Then, per benchmark, the model answers each question greedily with the benchmark's prompt and token budget
(``vlm_core.evaluation.benchmarks``), in batches, under each condition:

- ``image``: the question's own image;
- ``zeros``: every image feature zeroed (the projector still adds its bias: "no picture");
- ``shuffled``: the image of the nearest earlier question (cyclically) on another image (:func:`another_image`).

Answers are appended to ``answers-BENCHMARK-CHECKPOINTKEY-PROTOCOL.jsonl`` as each batch ends (``condition``,
``question_id``, ``prediction``): an interrupted evaluation resumes where it stopped, and one condition's lines are a
predictions file ``vlm-sweep score`` reads. ``CHECKPOINTKEY`` is :func:`checkpoint_key` (the weights);
``PROTOCOL`` a digest of what makes answers comparable (benchmark, prompt, budget, decoding, the controls' rules, the
questions asked); answers of another checkpoint or under another protocol are never mixed in.
The result (``eval.json``): per benchmark, the metrics under each condition, ``image_gain`` (image minus each
control, per metric), and the questions whose image was missing (counted and listed, not asked).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..base.errors import DataError
from ..base.hashing import json_digest
from ..base.outputs import atomic_write_text
from ..base.registry import Registry
from ..config import check_field
from ..data.images import open_rgb
from .benchmarks import BENCHMARKS, Benchmark, InlineImage, Question, locate, split_missing
from .inference import build_prompt_batch


def _own_images(questions: Sequence[Question], index: Sequence[int]) -> list[Question]:
    return [questions[i] for i in index]


def another_image(questions: Sequence[Question], i: int) -> Question:
    """The nearest question before ``i`` (cyclically) whose image is not question ``i``'s. Published files list an
    image's questions one after another (POPE 6, MME 2, VQAv2 ~5 an image), so "the previous question's image" would
    mostly be the question's own. Only when every question shares one image is that image shown."""
    n, own = len(questions), questions[i].image
    for back in range(1, n):
        if questions[(i - back) % n].image != own:
            return questions[(i - back) % n]
    return questions[(i - 1) % n]


def _other_images(questions: Sequence[Question], index: Sequence[int]) -> list[Question]:
    return [another_image(questions, i) for i in index]


@dataclass(frozen=True)
class Condition:
    """Whose image each question is shown with, and what is done to its features."""

    images: Callable[[Sequence[Question], Sequence[int]], list[Question]]
    features: Callable[[torch.Tensor], torch.Tensor] = lambda f: f


CONDITIONS: Registry[Condition] = Registry("eval.controls", "control", {
    "image": Condition(_own_images),
    "zeros": Condition(_own_images, torch.zeros_like),
    "shuffled": Condition(_other_images),
})
CONTROL_RULES = {"zeros": "the question's image, features zeroed",
                 "shuffled": "the image of the nearest earlier question on another image"}
"""What each control shows, in every protocol (a changed rule changes the protocol key: old answers not reused)."""


@dataclass
class BenchmarkEvalConfig:
    """Which benchmarks, where their files are, and how much of each to ask."""

    benchmarks: list[str]
    root: str | None = None
    """``--benchmarks DIR``: one folder per benchmark (README: "Benchmarks")."""
    files: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    """Questions per benchmark (a seeded subset, the same for every checkpoint); None: all."""
    seed: int = 0
    controls: list[str] = field(default_factory=lambda: ["zeros", "shuffled"])
    batch_size: int = 16
    budgets: dict[str, int] = field(default_factory=dict)
    """New tokens per answer for a benchmark instead of its reference budget (``--benchmark-budgets pope=16``):
    part of the protocol, so answers under another budget are never mixed in; the report names it."""

    def __post_init__(self) -> None:
        check_field(bool(self.benchmarks), "eval.benchmark", "name at least one benchmark")
        for name in self.benchmarks:
            BENCHMARKS.check(name)
        for name, budget in self.budgets.items():
            check_field(name in self.benchmarks, "eval.budgets", f"{name!r} is not one of the benchmarks asked")
            check_field(isinstance(budget, int) and budget >= 1, "eval.budgets", f"{name}: must be >= 1 tokens")
        for control in self.controls:
            CONDITIONS.check(control)
            check_field(control != "image", "eval.controls", "'image' is always evaluated; name controls only")
        check_field(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        check_field(self.limit is None or self.limit >= 1, "eval.limit", "must be >= 1")

    def only(self, name: str) -> BenchmarkEvalConfig:
        """The same evaluation of one of its benchmarks (with that benchmark's budget, if it has one)."""
        return replace(self, benchmarks=[name], budgets={k: v for k, v in self.budgets.items() if k == name})


@dataclass
class PreparedBenchmark:
    """A benchmark read and cut to what will be asked."""

    bench: Benchmark
    questions: list[Question]
    """Asked: the ``limit`` subset, images present."""
    missing: list[str]
    """Question ids of the subset whose image file is missing."""
    total: int
    budget: int
    """New tokens per answer: the benchmark's own, unless ``BenchmarkEvalConfig.budgets`` sets another."""

    def protocol(self, controls: Sequence[str]) -> dict[str, Any]:
        return {"benchmark": self.bench.name, "reproduces": self.bench.reproduces,
                "instruction": self.bench.instruction, "max_new_tokens": self.budget,
                **({"reference_max_new_tokens": self.bench.max_new_tokens}
                   if self.budget != self.bench.max_new_tokens else {}),
                "decoding": "greedy", "controls": {c: CONTROL_RULES[c] for c in controls},
                "questions": json_digest([q.qid for q in self.questions], 16), "n": len(self.questions)}


def prepare(cfg: BenchmarkEvalConfig) -> list[PreparedBenchmark]:
    """Read every benchmark and pick its questions (raises on a missing or malformed file, before any model)."""
    out = []
    for name in cfg.benchmarks:
        bench = BENCHMARKS[name]
        folder, images = locate(bench, cfg.root, cfg.files, cfg.images)
        questions = bench.read(bench, folder, images)
        picked = bench.limited(questions, cfg.limit, cfg.seed)
        present, missing = split_missing(picked)
        out.append(PreparedBenchmark(bench, present, [q.qid for q in missing], len(questions),
                                     cfg.budgets.get(name, bench.max_new_tokens)))
    return out


def load_question_image(q: Question):
    if isinstance(q.image, InlineImage):
        return q.image.open().convert("RGB")
    return open_rgb(q.image)


class ImageFeatures:
    """Each image's encoder output (the projector's input) computed once per evaluation and shared by all its
    questions and by the controls: POPE asks 6 questions an image, VQAv2 ~5, and the shuffled control shows the
    benchmark's own images again (the zeroed control needs only their shape). Images are decoded and encoded in one
    batch per call, only those not yet held; ``max_bytes`` bounds what is held (past it, the oldest are dropped and
    encoded again if asked for)."""

    def __init__(self, model, max_bytes: int = 1 << 30) -> None:
        self.model, self.max_bytes = model, max_bytes
        self.held: dict[Any, torch.Tensor] = {}
        self.encoded = 0
        """Images encoded so far (a test reads it)."""

    def __call__(self, questions: Sequence[Question]) -> torch.Tensor:
        keys = [q.image for q in questions]
        new = [q for q in {k: q for k, q in zip(keys, questions)}.values() if q.image not in self.held]
        if new:
            pixels = self.model.vision.preprocess([load_question_image(q) for q in new]).to(self.model.device)
            for q, f in zip(new, self.model.image_features(pixels)):
                self.held[q.image] = f
            self.encoded += len(new)
            size = f.numel() * f.element_size()  # every image's features have one shape
            while len(self.held) * size > self.max_bytes and len(self.held) > len(new):
                del self.held[next(iter(self.held))]  # the oldest (dicts keep insertion order)
        return torch.stack([self.held[k] for k in keys])


def drop_torn_tail(path: Path) -> None:
    """Cut a last line left without its newline (a process killed mid-write), so appending starts a clean line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_answers(path: Path) -> dict[str, dict[str, str]]:
    """``condition → question id → prediction`` from an answers file. A torn last line (a kill mid-write) is skipped;
    any other line that is not an answer is refused, naming the file and line (delete the file to answer again)."""
    out: dict[str, dict[str, str]] = {}
    if not path.is_file():
        return out
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                continue
            row = None
        if not isinstance(row, dict) or not {"condition", "question_id", "prediction"} <= row.keys():
            raise DataError(f"{path}: line {n} is not an answer (JSON with condition, question_id, prediction); "
                            f"delete the file to answer that benchmark again")
        out.setdefault(row["condition"], {})[row["question_id"]] = row["prediction"]
    return out


@torch.no_grad()
def answer_benchmark(model, prepared: PreparedBenchmark, controls: Sequence[str], batch_size: int,
                     answers_path: Path, stop_after_batches: int | None = None,
                     shard: tuple[int, int] = (0, 1)) -> dict[str, dict[str, str]]:
    """Every question's greedy answer under each condition, appended to ``answers_path`` batch by batch; answers
    already there are kept (resume). ``shard=(k, n)``: only questions k, k + n, k + 2n, ... (one Ray task's share;
    a shuffled control still looks for another image in the whole benchmark).
    ``stop_after_batches``: stop early (tests interrupt with it)."""
    model.eval()
    drop_torn_tail(answers_path)
    answers = read_answers(answers_path)
    questions, budget = prepared.questions, prepared.budget
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    batches = 0
    features = ImageFeatures(model)
    with open(answers_path, "a", encoding="utf-8") as f:
        for name in ["image", *controls]:
            cond, done = CONDITIONS[name], answers.setdefault(name, {})
            todo = [i for i, q in enumerate(questions) if q.qid not in done and i % shard[1] == shard[0]]
            for start in range(0, len(todo), batch_size):
                if stop_after_batches is not None and batches >= stop_after_batches:
                    return answers
                index = todo[start:start + batch_size]
                feats = cond.features(features(cond.images(questions, index)))
                batch = build_prompt_batch(model, [questions[i].prompt for i in index])
                gen = model.generate(batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device),
                                     image_features=feats, max_new_tokens=budget)
                for i, row in zip(index, gen):
                    text = model.tokenizer.decode(row, skip_special_tokens=True).strip()
                    done[questions[i].qid] = text
                    f.write(json.dumps({"condition": name, "question_id": questions[i].qid, "prediction": text})
                            + "\n")
                f.flush()
                batches += 1
    return answers


def checkpoint_key(checkpoint: str | Path) -> str:
    """What identifies a checkpoint's weights: its recorded file hashes, stage, tuning and model config (a digest);
    evaluation results are keyed by it (with the protocol), so a rerun reuses them and a new checkpoint never does."""
    folder = Path(checkpoint)
    meta = json.loads((folder / "checkpoint.json").read_text())
    config = folder / "vlm_config.json"
    return json_digest({"files": meta.get("files"), "stage": meta.get("stage"), "lm_tuning": meta.get("lm_tuning"),
                        "config": config.read_text() if config.is_file() else None}, 16)


def _gain(image: dict[str, float], control: dict[str, float]) -> dict[str, float]:
    return {k: image[k] - control[k] for k in image if k in control and k not in ("n", "splits")
            and isinstance(image[k], (int, float)) and isinstance(control[k], (int, float))}


def score_benchmark(prepared: PreparedBenchmark, answers: dict[str, dict[str, str]],
                    controls: Sequence[str]) -> dict[str, Any]:
    metrics = {name: prepared.bench.score(prepared.questions, answers.get(name, {})).metrics
               for name in ["image", *controls]}
    return {"reproduces": prepared.bench.reproduces, "headline": prepared.bench.headline,
            "beside": list(prepared.bench.beside),
            "max_new_tokens": prepared.budget, "reference_max_new_tokens": prepared.bench.max_new_tokens,
            "questions_in_file": prepared.total, "asked": len(prepared.questions),
            "missing_images": {"n": len(prepared.missing), "question_ids": prepared.missing},
            "metrics": metrics, "image_gain": {c: _gain(metrics["image"], metrics[c]) for c in controls}}


def evaluate_benchmarks(model, model_key: str, prepared: Sequence[PreparedBenchmark], cfg: BenchmarkEvalConfig,
                        out: str | Path, stop_after_batches: int | None = None) -> dict[str, Any]:
    """Answer and score every prepared benchmark; answers under ``out`` in ``answers-BENCH-MODELKEY-PROTOCOL.jsonl``
    (``model_key``: :func:`checkpoint_key`), so that another checkpoint evaluated into the same folder never resumes
    from these answers."""
    out = Path(out)
    result: dict[str, Any] = {"benchmarks": {}, "protocols": {}}
    for p in prepared:
        protocol = p.protocol(cfg.controls)
        key = json_digest(protocol, 12)
        path = out / f"answers-{p.bench.name}-{model_key}-{key}.jsonl"
        answers = answer_benchmark(model, p, cfg.controls, cfg.batch_size, path, stop_after_batches)
        result["benchmarks"][p.bench.name] = score_benchmark(p, answers, cfg.controls) | {"answers": str(path)}
        result["protocols"][p.bench.name] = protocol | {"key": key}
    return result


def evaluate_checkpoint_on_benchmarks(checkpoint: str | Path, cfg: BenchmarkEvalConfig, out: str | Path,
                                      stop_after_batches: int | None = None) -> dict[str, Any]:
    """Read the benchmarks, then load the checkpoint and evaluate it; writes ``out/eval.json``."""
    from ..training.checkpoint import load_vlm

    prepared = prepare(cfg)
    model, key = load_vlm(checkpoint), checkpoint_key(checkpoint)
    result = {"checkpoint": str(checkpoint), "checkpoint_key": key,
              **evaluate_benchmarks(model, key, prepared, cfg, out, stop_after_batches)}
    atomic_write_text(Path(out) / "eval.json", json.dumps(result, indent=2))
    return result
