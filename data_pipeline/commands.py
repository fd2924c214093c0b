"""``data_pipeline``'s own commands: ``data sample-corpus`` and ``data build`` (its flags are ``BuildConfig``'s
fields). ``sweeps.cli`` mounts them under ``vlm-sweep data``.

    vlm-sweep data sample-corpus --out corpus
    vlm-sweep data build --source corpus/sharegpt4v_sample.jsonl --images corpus/images --out data
    vlm-sweep data caption-fixture --out fixture    # a small file in the shape of ShareGPT4V's caption file
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_core.base.logs import start_console

from .build import build
from .caption_fixture import write_caption_fixture
from .config import BuildConfig
from .sample_corpus import write_sample_corpus


def sample_corpus_cmd(out: str = "corpus", n_train_images: int = 600, n_eval_questions: int = 300,
                      seed: int = 0) -> dict:
    """Write the embedded default ShareGPT4V-format corpus from packaged assets.

    Args:
        out: Destination folder.
        n_train_images: easy-vqa training images (each a multi-turn conversation).
        n_eval_questions: Held-out easy-vqa test questions (equal shares of yes/no, colour, shape).
        seed: Sampling seed.
    """
    counts = write_sample_corpus(out, n_train_images=n_train_images, n_eval_questions=n_eval_questions, seed=seed)
    print(json.dumps(counts, indent=2))
    return counts


def data_build_cmd(config: BuildConfig) -> dict:
    """Prepare datasets on Ray Data: validate, filter, translate, embed, UMAP, cluster, sample, write."""
    start_console(config.out, config.verbose)
    manifest = build(config)
    out = Path(config.out)
    print(json.dumps({"out": str(out), "counts": manifest["counts"], "variants": {
        k: {"train": v["train"], "val": v["val"]} for k, v in manifest["variants"].items()},
        "clusters": manifest["clusters"]["k"], "wall_s": manifest["wall_s"]}, indent=2))
    print(f"manifest: {out / 'manifest.json'}\nrejected: {out / 'rejected.jsonl'}\nplot: {out / 'umap.png'}")
    return manifest


def caption_fixture_cmd(out: str = "caption_fixture", n_rows: int = 400, seed: int = 0) -> dict:
    """Write a small file in the shape of ShareGPT4V's GPT-4V caption file, with its images (tests, measurements).

    Args:
        out: Destination folder (the JSON file and images/).
        n_rows: Records.
        seed: Seed (the fixture is deterministic per seed).
    """
    counts = write_caption_fixture(out, n_rows, seed)
    print(json.dumps(counts, indent=2))
    return counts


GROUPS = {"data": ("Data preparation", {"sample-corpus": sample_corpus_cmd, "build": data_build_cmd,
                                        "caption-fixture": caption_fixture_cmd})}
CONFIG_CLASSES = {"data build": BuildConfig}
"""Commands whose flags are one dataclass's fields (at top level), by command path."""
