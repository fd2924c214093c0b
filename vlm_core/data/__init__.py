"""Training samples: ShareGPT4V records and the dataset / collator (``dataset``), the one checked image reader
(``images``), the frozen encoder's features computed once and read by every trial (``feature_cache``), and token
lengths measured before anything trains (``lengths``)."""

from __future__ import annotations

from .dataset import Collator, ConversationDataset, read_records, split_records
from .feature_cache import FeatureCache, FeatureEncoder
from .images import ImageError, open_rgb, resolve_image

__all__ = ["Collator", "ConversationDataset", "FeatureCache", "FeatureEncoder", "ImageError", "open_rgb",
           "read_records", "resolve_image", "split_records"]
