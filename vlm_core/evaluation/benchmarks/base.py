"""What every benchmark is made of: its questions, where its published files live, and its score.

A benchmark is one :class:`Benchmark` record in ``BENCHMARKS`` (names declared in ``vlm_core.config.choices``): a
reader of its **published** file layout (local files only), the prompt it asks, its generation budget and its
scorer, each matching the lmms-eval 0.7.3 task named in ``reproduces``. Readers return :class:`Question` s; a
scorer turns predictions (question id → generated text) into metrics and per-question verdicts (:class:`Scored`).

Where the files are: ``--benchmarks DIR`` holds one folder per benchmark (:attr:`Benchmark.files`) and the image
folders they share (:attr:`Benchmark.images`, e.g. COCO val2014 for POPE and VQAv2); ``--benchmark-files
NAME=FOLDER`` / ``--benchmark-images NAME=FOLDER`` point one benchmark elsewhere (:func:`locate`). A missing or
malformed file raises :class:`BenchmarkFileError` before any model loads, in one line naming the file and where the
benchmark publishes it; a question whose image is missing is counted and listed (:func:`split_missing`), never
dropped silently.
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...base.errors import ConfigError, DataError
from ...base.registry import Registry
from ...config import choices


class BenchmarkFileError(DataError):
    """A benchmark file is missing or malformed; the message names the file and where the benchmark publishes it."""


@dataclass(frozen=True)
class InlineImage:
    """An image carried in the benchmark file itself (MMBench's TSV: base64)."""

    data: str

    def open(self):
        from PIL import Image

        return Image.open(io.BytesIO(base64.b64decode(self.data)))


@dataclass(frozen=True)
class Question:
    """One question as the model is asked it and as the scorer needs it."""

    qid: str
    """Unique within the benchmark; what a predictions file's ``question_id`` must match."""
    prompt: str
    """The human turn's text, the benchmark's instruction included, without the image marker."""
    target: Any
    """What the scorer compares with: a label, the human answers, an option letter, ..."""
    image: Path | InlineImage | None
    group: str = ""
    """Questions kept and scored together: MME's two per image, MMBench's rotated copies; ``""``: alone."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Split, category, language, answer type: what the scorer breaks the metrics down by."""


@dataclass
class Scored:
    """A scorer's answer: ``metrics`` (flat ``name → value``, on the reference's own scale) and each scored
    question's verdict (``qid → {"correct": …, "read": …}``)."""

    metrics: dict[str, float]
    verdicts: dict[str, dict[str, Any]]


Reader = Callable[["Benchmark", Path, Path], list[Question]]
Scorer = Callable[[Sequence[Question], Mapping[str, str]], Scored]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how to read it, ask it and score it (see the module docstring)."""

    name: str
    reproduces: str
    """The lmms-eval 0.7.3 task (and reference function) whose prompt and score this matches."""
    publisher: str
    """Where the files are published (printed when one is missing)."""
    files: str
    """The folder under ``--benchmarks DIR`` holding the benchmark's files, and what it holds."""
    file_names: tuple[str, ...]
    images: str
    """The image folder under ``--benchmarks DIR`` (``""``: images are inside the files)."""
    read: Reader
    score: Scorer
    max_new_tokens: int
    headline: str
    """The metric a one-number table shows (a key of :attr:`Scored.metrics`)."""
    beside: tuple[str, ...] = ()
    """Metrics the reports' table shows next to the headline, where the headline alone misleads (POPE's yes ratio:
    a model that says yes to everything scores F1 ≈ 0.67; xGQA's English accuracy and gap; MME's cognition)."""
    instruction: str = ""
    """What the prompt appends to each question (recorded with results)."""
    notes: str = ""
    """Where this deviates from the reference, and why."""
    pick: Callable[[Sequence[Question], int | None, int], list[Question]] | None = None
    """How ``--limit`` picks its questions when not :func:`subset` (easy-vqa: the question types in turn)."""

    def limited(self, questions: Sequence[Question], limit: int | None, seed: int = 0) -> list[Question]:
        """The ``limit`` questions every checkpoint answers (``pick``, else the seeded :func:`subset`)."""
        return (self.pick or subset)(questions, limit, seed)

    def missing_file(self, path: Path, problem: str = "not found") -> BenchmarkFileError:
        return BenchmarkFileError(f"{path}: {problem}; benchmark {self.name!r} reads {self.files}/"
                                  f"{{{','.join(self.file_names)}}} under --benchmarks DIR (or --benchmark-files "
                                  f"{self.name}=FOLDER), as published at {self.publisher}")


BENCHMARKS: Registry[Benchmark] = Registry.implementing(choices.BENCHMARK)


def locate(bench: Benchmark, root: str | Path | None, files: Mapping[str, str] | None = None,
           images: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """The benchmark's files folder and image folder: an explicit ``files`` / ``images`` entry for it, else its
    place under ``root``. A files folder given on its own takes its ``images/`` sub-folder when it has one."""
    files, images = dict(files or {}), dict(images or {})
    if bench.name not in files and root is None:
        raise BenchmarkFileError(f"benchmark {bench.name!r}: no files given; pass --benchmarks DIR (with "
                                 f"{bench.files}/ inside) or --benchmark-files {bench.name}=FOLDER")
    folder = Path(files[bench.name]) if bench.name in files else Path(root) / bench.files
    if bench.name in images:
        image_root = Path(images[bench.name])
    elif bench.name in files and (folder / "images").is_dir():
        image_root = folder / "images"
    else:
        image_root = (Path(root) if root is not None else folder.parent) / bench.images if bench.images else folder
    return folder.expanduser(), image_root.expanduser()


def by_name(spec: str | None, flag: str) -> dict[str, str]:
    """``"pope=/data/pope,gqa=/data/gqa"`` → ``{"pope": "/data/pope", "gqa": "/data/gqa"}`` (names checked)."""
    out = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise ConfigError(f"{flag}: {item!r} is not NAME=FOLDER")
        BENCHMARKS.check(name.strip(), flag)
        out[name.strip()] = value.strip()
    return out


def budgets_by_name(spec: str | None, flag: str) -> dict[str, int]:
    """``"pope=16,textvqa=64"`` → ``{"pope": 16, "textvqa": 64}`` (names checked; each a whole number)."""
    out = {}
    for name, value in by_name(spec, flag).items():
        if not value.isdigit():
            raise ConfigError(f"{flag}: {name}={value!r}: the budget is a number of new tokens (NAME=N)")
        out[name] = int(value)
    return out


def load_json(bench: Benchmark, path: Path) -> Any:
    if not path.is_file():
        raise bench.missing_file(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise bench.missing_file(path, f"not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def json_lines(path: Path, error: Callable[[str], Exception]) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file; a line that is not a JSON object raises
    ``error(problem)`` (the caller's exception, naming the file its own way)."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"line {n} is not JSON ({e.msg}); the file holds one JSON object a line") from None
        if not isinstance(obj, dict):
            raise error(f"line {n} is a {type(obj).__name__}, not a JSON object")
        rows.append((n, obj))
    return rows


def load_jsonl(bench: Benchmark, path: Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a benchmark's file (errors name its publisher)."""
    if not path.is_file():
        raise bench.missing_file(path)
    return json_lines(path, lambda problem: bench.missing_file(path, problem))


def need(bench: Benchmark, path: Path, where: str, record: Any, keys: Sequence[str]) -> None:
    """Raise naming the file, the record and the missing keys unless ``record`` is a mapping holding ``keys``."""
    if not isinstance(record, Mapping):
        raise bench.missing_file(path, f"{where} is a {type(record).__name__}, not an object")
    missing = [k for k in keys if k not in record]
    if missing:
        raise bench.missing_file(path, f"{where} has no {', '.join(map(repr, missing))}")


def subset(questions: Sequence[Question], limit: int | None, seed: int = 0) -> list[Question]:
    """A seeded subset of at least ``limit`` questions (whole groups: an MME image's two questions, an MMBench
    question's rotations), in the benchmark's order: the same questions for every checkpoint evaluated with the
    same ``limit`` and ``seed``. ``None`` or more than there are: all of them."""
    if limit is None or limit >= len(questions):
        return list(questions)
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        groups.setdefault(q.group or f"\0{q.qid}", []).append(i)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    chosen: list[int] = []
    for key in order:
        if len(chosen) >= limit:
            break
        chosen += groups[key]
    return [questions[i] for i in sorted(chosen)]


def split_missing(questions: Sequence[Question]) -> tuple[list[Question], list[Question]]:
    """The questions whose image file is there, and those whose image is missing (counted and listed by callers)."""
    present, missing = [], []
    for q in questions:
        (missing if isinstance(q.image, Path) and not q.image.is_file() else present).append(q)
    return present, missing


def rate(flags: Sequence[bool | float]) -> float:
    return float(sum(flags)) / len(flags) if flags else float("nan")
