"""``vlm-sweep``: the one console entry point. Its flags are generated from typed signatures (jsonargparse).

    vlm-sweep run --preset local                 # the main job on the embedded default (CPU, offline)
    vlm-sweep train --preset tiny --data corpus/sharegpt4v_sample.jsonl --images corpus/images --out runs/t
    vlm-sweep chat --checkpoint runs/main/stage2/final --image photo.jpg "What is in the picture?"
    vlm-sweep export --checkpoint runs/main/stage2/final --out exported/
    vlm-sweep data sample-corpus --out corpus
    vlm-sweep data build --source corpus/sharegpt4v_sample.jsonl --images corpus/images --out data
    vlm-sweep assets prepare                     # convert the packaged SmolLM2 once (cached)
    vlm-sweep assets convert SRC DST             # a pickle-only model folder → a safetensors folder DST
    vlm-sweep assets download --preset paper --to DIR   # the preset's hub models at their pinned revisions
    vlm-sweep sweep --data data --images corpus/images --preset local --grid paper19 --stage all
    vlm-sweep report runs/sweep
    vlm-sweep eval CHECKPOINT --questions corpus/eval_easyvqa.jsonl --images corpus/images

``--preset`` picks a named ``VLMConfig`` (tiny, local, paper); any ``--model.*`` flag overrides one field of it,
e.g. ``--preset local --model.projector.name dense_connector --model.format.mode raw``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import typing
from pathlib import Path

from .config import TrainConfig, VLMConfig
from .presets import get_preset
from .runner import DataSpec

log = logging.getLogger("vlm_sweep")


def _setup_env() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=os.environ.get("VLM_SWEEP_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
    from .checkpoint import resume_point
    from .runner import run_stage

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
    from .checkpoint import load_vlm
    from .images import open_rgb
    from .inference import answer

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
    from .checkpoint import load_vlm
    from .export import export_llava

    path = export_llava(load_vlm(checkpoint), out)
    print(f"exported to {path}")
    return str(path)


def assets_prepare_cmd() -> None:
    """Convert the packaged SmolLM2 GGUF once into the cache and print where the offline assets are."""
    from .assets import minilm_path, smollm2_folder

    print(json.dumps({"smollm2": str(smollm2_folder()), "minilm": str(minilm_path())}, indent=2))


def assets_convert_cmd(src: str, dst: str) -> dict:
    """Convert a local model folder with only pickled weights (pytorch_model.bin) into a safetensors folder.

    Args:
        src: The model folder: ``pytorch_model.bin``, or shards + ``pytorch_model.bin.index.json``, with its config
            and tokenizer files. Read with ``torch.load(weights_only=True)``: a pickle that would run code is
            refused without running it.
        dst: The new folder (must not exist, or be empty): ``model.safetensors`` (or shards + index) and every
            non-weight file of ``src``. Load it with e.g. ``--translate.model DST``.
    """
    from .assets import convert_to_safetensors

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
    from .assets import download_assets

    manifest = download_assets(preset, to, translator=translator)
    print(json.dumps({"assets": str(Path(to) / "assets.json"), "models": [
        {"model": f"{m['repo_id']}@{m['revision']}", "folder": m["folder"], "bytes": m["bytes"]}
        for m in manifest["models"]]}, indent=2))
    print(f"use it with: --assets {to}  (or VLM_SWEEP_ASSETS={to})")
    return manifest


def sample_corpus_cmd(out: str = "corpus", n_train_images: int = 600, n_eval_questions: int = 300,
                      seed: int = 0) -> dict:
    """Write the embedded default ShareGPT4V-format corpus from packaged assets.

    Args:
        out: Destination folder.
        n_train_images: easy-vqa training images (each a multi-turn conversation).
        n_eval_questions: Held-out easy-vqa test questions (equal shares of yes/no, colour, shape).
        seed: Sampling seed.
    """
    from data_pipeline.sample_corpus import write_sample_corpus

    counts = write_sample_corpus(out, n_train_images=n_train_images, n_eval_questions=n_eval_questions, seed=seed)
    print(json.dumps(counts, indent=2))
    return counts


def run_cmd(preset: str = "local", out: str = "runs/main", grid: str = "paper19", paper_ids: list[int] | None = None,
            n_train_images: int = 600, random_size: int = 300, umap_size: int = 400, eval_questions: int | None = None,
            wandb: str = "auto") -> dict:
    """The whole study on the embedded default: corpus → data build → stage-1 and stage-2 sweeps → eval → report.

    Args:
        preset: tiny (smoke runs), local (the whole grid, ~20 min on 2 cores), local-long (one lineage, trained
            longer: 36 min), paper (GPUs).
        out: Output folder (rerun with the same one to reuse finished steps and trials).
        grid: paper19 (the study's 19 + 6 runs) or full.
        paper_ids: Run only these paper19 rows and their continuations (default: all; local-long: [7]).
        n_train_images: Size of the sample corpus (easy-vqa images).
        random_size: Rows of the 10kRandom variant.
        umap_size: Rows of the 20kUmap variant.
        eval_questions: Held-out easy-vqa questions per stage-2 checkpoint (default 36; local-long 96).
        wandb: auto (online with a key, else offline), offline, online, disabled.
    """
    from .main_job import StudyConfig, run_main_job

    return run_main_job(StudyConfig(preset=preset, out=out, grid=grid, paper_ids=paper_ids,
                                    n_train_images=n_train_images, random_size=random_size, umap_size=umap_size,
                                    eval_questions=eval_questions, wandb=wandb))


def data_build_cmd(config) -> dict:
    """Prepare datasets on Ray Data: validate, filter, translate, embed, UMAP, cluster, sample, write."""
    from data_pipeline.build import build

    manifest = build(config)
    out = Path(config.out)
    print(json.dumps({"out": str(out), "counts": manifest["counts"], "variants": {
        k: {"train": v["train"], "val": v["val"]} for k, v in manifest["variants"].items()},
        "clusters": manifest["clusters"]["k"], "wall_s": manifest["wall_s"]}, indent=2))
    print(f"manifest: {out / 'manifest.json'}\nrejected: {out / 'rejected.jsonl'}\nplot: {out / 'umap.png'}")
    return manifest


def sweep_cmd(config) -> dict:
    """Run the ablation study on Ray Tune: stage 1, lineage, stage 2 under ASHA (see sweeps/driver.py)."""
    from sweeps.driver import run_sweep

    result = run_sweep(config)
    print(json.dumps(result, indent=2, default=str))
    return result


def eval_cmd(checkpoint: str, data: str | None = None, questions: str | None = None, images: str | None = None,
             val: str | None = None, max_questions: int | None = None, max_val_samples: int | None = None,
             controls: str | None = None, batch_size: int = 16, instruction: str | None = None,
             max_new_tokens: int | None = None, out: str | None = None) -> dict:
    """Evaluate a checkpoint: held-out loss / perplexity and answer accuracy, with and without the image.

    Args:
        checkpoint: A checkpoint folder (stage 2: projector + LLM; stage 1: projector on the preset's LLM).
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
    from data_pipeline.sample_corpus import EVAL_FILE

    from .config import ConfigError
    from .evaluation import EvalConfig, evaluate_checkpoint

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


def report_cmd(experiment: str) -> dict:
    """Write report.md, trials.csv and loss / by-axis plots for a sweep's experiment folder (its --out)."""
    from sweeps.report import write_report

    result = write_report(experiment)
    print(json.dumps(result, indent=2))
    return result


def _build_config_cls():
    from data_pipeline.config import BuildConfig

    return BuildConfig


def _sweep_config_cls():
    from sweeps.driver import SweepConfig

    return SweepConfig


COMMANDS = {"train": train_cmd, "chat": chat_cmd, "export": export_cmd, "run": run_cmd, "sweep": sweep_cmd,
            "report": report_cmd, "eval": eval_cmd}
DATA_COMMANDS = {"sample-corpus": sample_corpus_cmd, "build": data_build_cmd}
ASSETS_COMMANDS = {"prepare": assets_prepare_cmd, "convert": assets_convert_cmd, "download": assets_download_cmd}
# Command groups (``vlm-sweep GROUP COMMAND``): help text and their commands.
GROUPS = {"data": ("Data preparation", DATA_COMMANDS),
          "assets": ("Model assets: packaged, converted to safetensors, downloaded at pinned revisions",
                     ASSETS_COMMANDS)}
# Commands whose flags are one dataclass's fields (at top level), keyed by command path.
CONFIG_COMMANDS = {"data build": _build_config_cls, "sweep": _sweep_config_cls}
POSITIONAL = {"chat": ("question",), "report": ("experiment",), "eval": ("checkpoint",),
              "assets convert": ("src", "dst")}


def _preset_from_argv(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return "tiny"


def _command_parser(path: str, fn, preset: str):
    from jsonargparse import ActionConfigFile, ArgumentParser

    sub = ArgumentParser(description=fn.__doc__.split("\n")[0])
    sub.add_argument("--config", action=ActionConfigFile,
                     help="A YAML / JSON file of this command's options (flags after it override it); unknown "
                          "keys and bad values are named")
    if path in CONFIG_COMMANDS:
        sub.add_class_arguments(CONFIG_COMMANDS[path](), None)
        return sub
    positional = POSITIONAL.get(path, ())
    sub.add_function_arguments(fn, fail_untyped=True, skip=set(positional))
    for arg in positional:
        sub.add_argument(arg, type=typing.get_type_hints(fn)[arg], help=f"the {arg}")
    if "model" in fn.__annotations__:
        sub.set_defaults(model=get_preset(preset).to_dict())
    return sub


def build_parser(argv: list[str]):
    from jsonargparse import ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings become --help text
    parser = ArgumentParser(prog="vlm-sweep", description="LLaVA-style visual instruction tuning sweeps on Ray.")
    subs = parser.add_subcommands(dest="command")
    preset = _preset_from_argv(argv)
    for name, fn in COMMANDS.items():
        subs.add_subcommand(name, _command_parser(name, fn, preset), help=fn.__doc__.split("\n")[0])
    for group, (description, commands) in GROUPS.items():
        group_parser = ArgumentParser(description=description)
        subs.add_subcommand(group, group_parser, help=description)
        group_subs = group_parser.add_subcommands(dest=f"{group}_command")
        for name, fn in commands.items():
            group_subs.add_subcommand(name, _command_parser(f"{group} {name}", fn, preset),
                                      help=fn.__doc__.split("\n")[0])
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message already says what is wrong and how to fix it: printed without a traceback."""
    from data_pipeline.records import SourceError
    from data_pipeline.sampling import SamplingError
    from sweeps.driver import SweepInterrupted

    from .assets import AssetError
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .conversation import FormatError
    from .data import DataError
    from .hub import ModelSourceError
    from .outputs import OutputError
    from .ray_env import RayUnreachable
    from .training import NonFiniteLoss

    return (ConfigError, ModelSourceError, CheckpointError, FormatError, AssetError, FileNotFoundError, SourceError,
            SamplingError, RayUnreachable, SweepInterrupted, DataError, OutputError, NonFiniteLoss)


# OS errors that are the machine's state, not a bug: said in one line with the path, without a traceback
OS_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.ENOSPC: "no space left",
             errno.EROFS: "read-only file system", errno.EDQUOT: "disk quota exceeded"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _setup_env()
    try:
        parser = build_parser(argv)
        cfg = parser.parse_args(argv)
        init = parser.instantiate(cfg)
        if init.command in GROUPS:
            group = init[init.command]
            name = group[f"{init.command}_command"]
            path, fn, kwargs = f"{init.command} {name}", GROUPS[init.command][1][name], group[name]
        else:
            path, fn, kwargs = init.command, COMMANDS[init.command], init[init.command]
        kwargs = {k: v for k, v in dict(vars(kwargs)).items() if k != "config"}  # --config: already merged
        if path in CONFIG_COMMANDS:
            fn(CONFIG_COMMANDS[path]()(**kwargs))
        else:
            fn(**{k: v for k, v in kwargs.items() if k in fn.__code__.co_varnames})
    except user_errors() as e:
        print(f"vlm-sweep: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in OS_ERRNOS:
            raise
        print(f"vlm-sweep: error: {e.filename or ''}: {OS_ERRNOS[e.errno]} ({e.strerror}); free space, fix the "
              f"permissions or choose another output folder", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
