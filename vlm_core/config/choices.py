"""The named choices of the configs' fields, declared as data: name → what it is.

A config's ``__post_init__`` checks a name against these, so an unregistered name is refused — naming the field and
the choices — before any model is built, whether the config came from the CLI, a file, a Ray worker's dict or
Python. The modules that implement the choices (``vlm_core.model``, ``vlm_core.training``) sit above the configs and
fill a ``Registry.implementing(...)`` of each set; the configs never import them. Why declared here rather than
checked after parsing: a check in ``__post_init__`` covers every way a config is made, with no call anyone must
remember to add. A new projector (schedule, encoder, ...) is one line here and its registration where it is
implemented; ``tests/test_registries.py`` fails when the two differ.
"""

from __future__ import annotations

from ..base.registry import Registry

VISION_ENCODER: Registry[str] = Registry("vision.encoder", "vision encoder", {
    "clip": "a CLIPVisionModel (TinyCLIP-ViT-40M in production; random-init of the config's sizes offline)",
    "efficientnet_lite0": "the ImageNet-trained EfficientNet-Lite0 CNN (packaged weights): 49 tokens at 224 px",
})
PROJECTOR: Registry[str] = Registry("projector.name", "projector", {
    "linear": "one linear layer",
    "mlp2x_gelu": "LLaVA-1.5's Linear → GELU → Linear",
    "dense_connector": "the dense connector's DCI: the main feature and G group means on channels, then the MLP",
    "dense_sci": "the dense connector's SCI: the main feature and G - 1 picked layers on channels, then the MLP",
    "dense_sti": "the dense connector's STI: the main tokens and the pooled tokens of G - 1 picked layers",
})
FEATURE_NORM: Registry[str] = Registry("projector.feature_norm", "feature norm", {
    "none": "the encoder's features as they are (LLaVA)",
    "standardize": "per token and channel, with statistics measured on training images before stage 1",
})
STI_POOL: Registry[str] = Registry("projector.sti_pool", "STI pooling", {
    "sequence": "1-D average pooling along the token sequence (the reference's)",
    "grid": "2-D windows of the patch grid (our variant)",
})
SCHEDULER: Registry[str] = Registry("train.scheduler", "schedule", {
    "linear": "linear warmup from 0, then linear decay to 0",
    "cosine": "linear warmup from 0, then cosine decay to 0",
})
FORMAT_MODE: Registry[str] = Registry("format.mode", "mode", {
    "chat": "the tokenizer's chat template",
    "raw": "prompt and response joined plainly, with EOS",
})
LM_TUNING: Registry[str] = Registry("train.lm_tuning", "LLM tuning", {
    "full": "every weight of the LLM trains (stage 2)",
    "lora": "low-rank adapters on the LLM's linear layers; its base weights stay frozen",
})
SHARDING: Registry[str] = Registry("train.sharding", "sharding", {
    "none": "every worker holds the whole model (data parallel)",
    "fsdp": "the LLM's weights, gradients and optimizer state split over the workers (FSDP2)",
})
MIXED_PRECISION: Registry[str] = Registry("train.mixed_precision", "mixed precision", {
    "auto": "bf16 autocast on CUDA, fp32 on the CPU",
    "bf16": "bf16 autocast",
    "no": "fp32",
})
FROZEN_DTYPE: Registry[str] = Registry("train.frozen_dtype", "frozen dtype", {
    "auto": "bf16 on CUDA under bf16 autocast, fp32 otherwise",
    "bf16": "bf16",
    "fp32": "fp32",
})
BENCHMARK: Registry[str] = Registry("eval.benchmark", "benchmark", {
    "pope": "POPE object hallucination, COCO val2014, adversarial / popular / random (lmms-eval pope)",
    "vqav2": "VQAv2 val, soft accuracy over 10 human answers (lmms-eval vqav2_val)",
    "gqa": "GQA testdev-balanced, exact match (lmms-eval gqa)",
    "xgqa-id": "xGQA's Indonesian testdev questions beside their English originals, exact match (GQA's rule)",
    "textvqa": "TextVQA val, soft accuracy, no OCR tokens (lmms-eval textvqa_val)",
    "scienceqa-img": "ScienceQA-IMG test, the option letter (lmms-eval scienceqa_img)",
    "mme": "MME perception and cognition, acc and acc+ per image pair (lmms-eval mme)",
    "mmbench-en-dev": ("MMBench dev-en, circular evaluation, offline answer extraction "
                       "(lmms-eval mmbench_en_dev_static)"),
    "easy-vqa": "easy-vqa's synthetic shapes: yes/no, colour and shape questions (the embedded default's)",
})
