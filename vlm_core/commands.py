"""``vlm_core``'s own commands: ``train``, ``chat``, ``export``, ``eval`` and ``assets prepare / convert / download``.
Each is a typed function; ``sweeps.cli`` turns their signatures into ``vlm-sweep`` flags (jsonargparse).

    vlm-sweep train --preset tiny --data.train corpus/sharegpt4v_sample.jsonl --data.images corpus/images --out runs/t
    vlm-sweep chat --checkpoint runs/main/stage2/final --image photo.jpg "What is in the picture?"
    vlm-sweep export --checkpoint runs/main/stage2/final --out exported/
    vlm-sweep eval CHECKPOINT --data runs/main/corpus --val runs/main/data/20kUmap/val-00000.parquet
    vlm-sweep assets prepare                     # convert the packaged SmolLM2 once (cached)
    vlm-sweep assets convert SRC DST             # a pickle-only model folder → a safetensors folder DST
    vlm-sweep assets download --preset paper --to DIR   # the preset's hub models at their pinned revisions
    vlm-sweep assets paper-shaped --lm-layers 2  # the paper's models with random weights, into the asset cache
    vlm-sweep show preset local                  # a preset's record (no name: every preset's)
    vlm-sweep show prompt --preset local         # a rendered sample, its trained tokens marked
    vlm-sweep show lengths --preset paper-shaped --records FILE   # token lengths under a preset's formatter
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .assets.convert import convert_to_safetensors
from .assets.download import download_assets
from .assets.hub import LLAMA32_1B, TINYCLIP
from .assets.packaged import minilm_path, smollm2_folder
from .assets.paper_shaped import materialize
from .base.errors import ConfigError
from .base.outputs import atomic_write_text
from .config import TrainConfig, VLMConfig
from .data.dataset import read_records
from .data.images import open_rgb
from .data.lengths import formatter_for, measure
from .evaluation.benchmark_eval import BenchmarkEvalConfig, evaluate_checkpoint_on_benchmarks
from .evaluation.benchmarks import BENCHMARKS, budgets_by_name, by_name, locate
from .evaluation.benchmarks.easy_vqa import EVAL_FILE
from .evaluation.benchmarks.predictions import read_predictions, score_predictions
from .evaluation.export import export_llava
from .evaluation.heldout import EvalConfig, evaluate_checkpoint
from .evaluation.inference import answer
from .model.conversation import IGNORE_INDEX
from .model.vision.efficientnet import packaged_folder as efficientnet_lite0_folder
from .presets import PRESETS, get_preset
from .training.checkpoint import load_vlm, resume_point
from .training.one_stage import DataSpec, run_stage


def train_cmd(model: VLMConfig, data: DataSpec, train: TrainConfig = TrainConfig(), out: str = "runs/train",
              resume: str | None = None, preset: str = "tiny") -> str:
    """Train one stage of one config in-process.

    Args:
        model: The model config (defaults come from ``--preset``).
        data: Training data.
        train: The training run.
        out: Run folder (checkpoints, metrics.jsonl, run_config.json, final/).
        resume: A checkpoint of this run to continue from, or the run folder (its newest usable checkpoint;
            corrupt ones are skipped with a warning).
        preset: Named model config: tiny, local, paper.
    """
    result, final = run_stage(model, train, data, out, resume_from=resume_point(resume) if resume else None)
    print(json.dumps({"final_checkpoint": str(final), "steps": result.steps,
                      "metrics": result.epoch_metrics[-1] if result.epoch_metrics else {}}, indent=2))
    return str(final)


def chat_cmd(question: str, checkpoint: str, image: str, max_new_tokens: int = 64) -> str:
    """Answer a question about an image with a trained checkpoint.

    Args:
        question: The question (the image marker is added for you).
        checkpoint: A checkpoint folder (stage 1 or stage 2).
        image: Path of the image.
        max_new_tokens: Generation budget.
    """
    picture = open_rgb(image)  # before loading the model: a bad image fails in a second, by name
    model = load_vlm(checkpoint)
    reply = answer(model, [picture], [question], max_new_tokens=max_new_tokens)[0]
    print(reply)
    return reply


def export_cmd(checkpoint: str, out: str) -> str:
    """Export a linear / mlp2x_gelu checkpoint to transformers' LLaVA format.

    Args:
        checkpoint: A checkpoint folder.
        out: Destination folder (LlavaForConditionalGeneration + LlavaProcessor).
    """
    path = export_llava(load_vlm(checkpoint), out)
    print(f"exported to {path}")
    return str(path)


def assets_prepare_cmd() -> None:
    """Convert the packaged SmolLM2 GGUF and EfficientNet-Lite0 state dict once into the cache and print where the
    offline assets are."""
    print(json.dumps({"smollm2": str(smollm2_folder()), "efficientnet-lite0": str(efficientnet_lite0_folder()),
                      "minilm": str(minilm_path())}, indent=2))


def assets_convert_cmd(src: str, dst: str) -> dict:
    """Convert a local model folder with only pickled weights (pytorch_model.bin) into a safetensors folder.

    Args:
        src: The model folder: ``pytorch_model.bin``, or shards + ``pytorch_model.bin.index.json``, with its config
            and tokenizer files. Read with ``torch.load(weights_only=True)``: a pickle that would run code is
            refused without running it.
        dst: The new folder (must not exist, or be empty): ``model.safetensors`` (or shards + index) and every
            non-weight file of ``src``. Load it with e.g. ``--translate.model DST``.
    """
    result = convert_to_safetensors(src, dst)
    print(json.dumps(result, indent=2))
    return result


def assets_download_cmd(to: str, preset: str = "paper", translator: bool = True) -> dict:
    """Fetch every hub model a preset uses, at its pinned revision, into an assets folder (``--assets DIR``).

    Args:
        to: The assets folder: ``DIR/<owner>--<name>/<revision>/`` per model, and ``DIR/assets.json``. Models
            already there (per assets.json) are not fetched again.
        preset: The model preset whose vision encoder, LLM and tokenizer to fetch (tiny / local use no hub
            model); the embedder all-MiniLM-L6-v2 is always fetched.
        translator: Also fetch the documented translator Helsinki-NLP/opus-mt-en-id.
    """
    manifest = download_assets(preset, get_preset(preset), to, translator=translator)
    print(json.dumps({"assets": str(Path(to) / "assets.json"), "models": [
        {"model": f"{m['repo_id']}@{m['revision']}", "folder": m["folder"], "bytes": m["bytes"]}
        for m in manifest["models"]]}, indent=2))
    print(f"use it with: --assets {to}  (or VLM_SWEEP_ASSETS={to})")
    return manifest


def eval_cmd(checkpoint: str, benchmark: str | None = None, benchmarks: str | None = None,
             benchmark_files: str | None = None, benchmark_images: str | None = None,
             benchmark_budgets: str | None = None, limit: int | None = None,
             seed: int = 0, data: str | None = None, questions: str | None = None, images: str | None = None,
             val: str | None = None, max_questions: int | None = None, max_val_samples: int | None = None,
             controls: str | None = None, batch_size: int = 16, instruction: str | None = None,
             max_new_tokens: int | None = None, out: str | None = None) -> dict:
    """Evaluate a checkpoint on the field's benchmarks (``--benchmark``), or on held-out easy-vqa questions and
    conversations (``--data`` / ``--questions``): answers with and without the image, loss and perplexity.

    Args:
        checkpoint: A checkpoint folder (stage 2: projector + LLM; stage 1: projector on the preset's LLM).
        benchmark: Benchmarks, comma-separated (pope, vqav2, gqa, xgqa-id, textvqa, scienceqa-img, mme,
            mmbench-en-dev, easy-vqa): each asked with its own prompt and token budget, scored as lmms-eval scores it;
            answers resume after an interruption. ``--out`` is then a folder (default ``eval/CHECKPOINT_NAME``).
        benchmarks: The folder holding one folder per benchmark (README: "Benchmarks").
        benchmark_files: ``NAME=FOLDER,...``: where a benchmark's files are, instead of under ``benchmarks``.
        benchmark_images: ``NAME=FOLDER,...``: where its images are.
        benchmark_budgets: ``NAME=N,...``: new tokens per answer instead of a benchmark's reference budget (kept
            in the protocol; the reference's is the default).
        limit: Questions per benchmark: a seeded subset, the same for every checkpoint (default: all).
        seed: The subset's seed.
        data: A sample-corpus folder (``vlm-sweep data sample-corpus --out``, or ``OUT/corpus`` of ``vlm-sweep
            run``): sets ``questions`` to its eval_easyvqa.jsonl and ``images`` to its images/.
        questions: JSONL of held-out questions with their answers.
        images: Image root the questions' and ``val``'s image paths are relative to.
        val: Held-out conversations (JSONL / parquet) for loss and perplexity, e.g. a variant's val split.
        max_questions: Evaluate N questions, taking yes/no, colour and shape questions in turn.
        max_val_samples: Score the first N held-out conversations only.
        controls: Text-only controls, comma-separated: ``zeros``, ``shuffled`` (default: both).
        batch_size: Questions per generation batch.
        instruction: Appended to each question after a newline (default: LLaVA-1.5's "Answer the question using a
            single word or phrase."; ``""``: the bare question). Recorded in the result's ``answers.protocol``.
        max_new_tokens: New tokens per answer (default 16, lmms-eval's VQAv2 budget).
        out: Also write the result as JSON here.
    """
    if benchmark is not None:
        cfg_b = BenchmarkEvalConfig(
            [b.strip() for b in benchmark.split(",") if b.strip()], root=benchmarks, limit=limit, seed=seed,
            files=by_name(benchmark_files, "--benchmark_files"),
            images=by_name(benchmark_images, "--benchmark_images"),
            budgets=budgets_by_name(benchmark_budgets, "--benchmark_budgets"), batch_size=batch_size,
            **({"controls": [c.strip() for c in controls.split(",") if c.strip()]} if controls is not None else {}))
        result = evaluate_checkpoint_on_benchmarks(checkpoint, cfg_b, out or str(Path("eval") / Path(checkpoint).name))
        print(json.dumps({name: {"image": r["metrics"]["image"], "image_gain": r["image_gain"],
                                 "missing_images": r["missing_images"]["n"]}
                          for name, r in result["benchmarks"].items()}, indent=2))
        return result
    if data is not None:
        questions = questions or str(Path(data) / EVAL_FILE)
        images = images or str(Path(data) / "images")
    if questions is None or images is None:
        raise ConfigError("eval: pass --data CORPUS_FOLDER, or both --questions FILE and --images FOLDER")
    cfg = EvalConfig(questions=questions, images=images, val=val, max_questions=max_questions,
                     max_val_samples=max_val_samples, batch_size=batch_size,
                     **({"instruction": instruction} if instruction is not None else {}),
                     **({"max_new_tokens": max_new_tokens} if max_new_tokens is not None else {}),
                     **({"controls": [c.strip() for c in controls.split(",") if c.strip()]}
                        if controls is not None else {}))
    result = evaluate_checkpoint(checkpoint, cfg, out)
    print(json.dumps({k: v for k, v in result.items() if k != "answers"} | {
        k: result["answers"][k] for k in ("accuracy", "exact_match", "by_type", "exact_match_by_type", "unanswered",
                                          "protocol")}, indent=2))
    return result


def score_cmd(benchmark: str, predictions: str, benchmarks: str | None = None, benchmark_files: str | None = None,
              benchmark_images: str | None = None, out: str | None = None) -> dict:
    """Score a predictions file (``question_id``, ``prediction`` a line) on a benchmark, as the field scores it.

    Args:
        benchmark: The benchmark (``vlm-sweep show benchmarks``): pope, vqav2, gqa, xgqa-id, textvqa, scienceqa-img,
            mme, mmbench-en-dev, easy-vqa.
        predictions: JSONL, one ``{"question_id": ..., "prediction": ...}`` a line (``text`` is read too).
        benchmarks: The folder holding one folder per benchmark (README: "Benchmarks").
        benchmark_files: ``NAME=FOLDER,...``: where a benchmark's files are, instead of under ``benchmarks``.
        benchmark_images: ``NAME=FOLDER,...``: where its images are.
        out: Also write the result as JSON here.
    """
    bench = BENCHMARKS[benchmark]
    folder, images = locate(bench, benchmarks, by_name(benchmark_files, "--benchmark_files"),
                            by_name(benchmark_images, "--benchmark_images"))
    result = score_predictions(bench, bench.read(bench, folder, images), read_predictions(predictions), predictions)
    print(json.dumps(result, indent=2))
    if out:
        atomic_write_text(out, json.dumps(result, indent=2))
    return result


def assets_paper_shaped_cmd(lm_layers: int | None = 2, seed: int = 0, tokenizer: str = "smollm2") -> dict:
    """Materialize the paper's models (TinyCLIP-ViT-40M-32, Llama-3.2-1B-Instruct) with random weights from their
    published configs into the asset cache, once; print their folders.

    Args:
        lm_layers: The LLM's depth (None: the published 16).
        seed: Seed of the random weights.
        tokenizer: The paper-shaped tokenizer's base BPE: smollm2 (the packaged one) or bytes (no merges).
    """
    folders = {TINYCLIP: str(materialize(TINYCLIP, seed=seed)),
               LLAMA32_1B: str(materialize(LLAMA32_1B, num_layers=lm_layers, seed=seed, tokenizer=tokenizer))}
    print(json.dumps(folders, indent=2))
    return folders


def show_preset_cmd(name: str | None = None) -> dict | list:
    """Print a preset's record, its model config included (no name: every preset's, lazy models not built).

    Args:
        name: A preset.
    """
    record = PRESETS[name].describe() if name else [p.describe(with_model=False) for _, p in PRESETS.items()]
    print(json.dumps(record, indent=2))
    return record


def show_prompt_cmd(preset: str = "tiny", question: str = "What shape is this?", answer: str = "A circle.") -> str:
    """Print a one-turn sample as the preset's formatter renders it, the trained (assistant) tokens in brackets.

    Args:
        preset: Whose tokenizer, format mode and image tokens.
        question: The human turn (the image marker is put before it).
        answer: The assistant turn.
    """
    fmt = formatter_for(get_preset(preset))
    encoded = fmt.encode([{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}])
    text = "".join(f"[{fmt.tokenizer.decode([t])}]" if label != IGNORE_INDEX else fmt.tokenizer.decode([t])
                   for t, label in zip(encoded.input_ids, encoded.labels))
    print(text)
    return text


def show_lengths_cmd(records: str, preset: str = "local", mode: str | None = None,
                     max_length: int | None = None) -> dict:
    """Print the token-length distribution of records under a preset's formatter (what every sweep measures first).

    Args:
        records: .json / .jsonl / .parquet records.
        preset: Whose tokenizer, format and image tokens.
        mode: Override the preset's format.mode (chat / raw).
        max_length: Override the preset's format.max_length.
    """
    cfg = get_preset(preset)  # a replaced format is checked again (an unknown mode is named)
    cfg.format = dataclasses.replace(cfg.format, mode=mode or cfg.format.mode,
                                     max_length=max_length or cfg.format.max_length)
    stats = dataclasses.asdict(measure(read_records(records), formatter_for(cfg)))
    print(json.dumps(stats, indent=2))
    return stats


# What ``sweeps.cli`` mounts: top-level commands, command groups (``vlm-sweep GROUP COMMAND``: help text and
# commands), and the positional arguments of a command path.
COMMANDS = {"train": train_cmd, "chat": chat_cmd, "export": export_cmd, "eval": eval_cmd, "score": score_cmd}
GROUPS = {"assets": ("Model assets: packaged, converted to safetensors, downloaded at pinned revisions",
                     {"prepare": assets_prepare_cmd, "convert": assets_convert_cmd, "download": assets_download_cmd,
                      "paper-shaped": assets_paper_shaped_cmd}),
          "show": ("What a name stands for: presets, prompts, token lengths, grids, hardware profiles",
                   {"preset": show_preset_cmd, "prompt": show_prompt_cmd, "lengths": show_lengths_cmd})}
POSITIONAL = {"chat": ("question",), "eval": ("checkpoint",), "assets convert": ("src", "dst"),
              "show preset": ("name",)}
