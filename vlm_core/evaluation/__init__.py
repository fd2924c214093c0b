"""Judging a trained model: answers scored by the field's rules (``answers``: VQAv2 normalisation, yes/no, exact
match), the held-out evaluation with text-only controls (``heldout``: ``vlm-sweep eval``), inference (``inference``)
and export to transformers' LLaVA classes (``export``)."""

from __future__ import annotations

from .answers import score, vqa_normalise
from .heldout import EvalConfig, evaluate, evaluate_checkpoint
from .inference import answer

__all__ = ["EvalConfig", "answer", "evaluate", "evaluate_checkpoint", "score", "vqa_normalise"]
