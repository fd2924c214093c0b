"""What each hidden state of a preset's vision encoder carries about an easy-vqa image: a linear probe (logistic
regression, 3-fold cross-validated accuracy) of the shape's colour (8 kinds) and its shape (3 kinds) from each
hidden state's tokens average-pooled to a 3 × 3 grid, on easy-vqa training images (no training of the encoder).

    python bench/encoder_probe.py --preset local          # EfficientNet-Lite0 (packaged ImageNet weights)
    python bench/encoder_probe.py --preset local-clip     # the random-init CLIP
"""

from __future__ import annotations

import argparse
import re

import numpy as np
import torch
import torch.nn.functional as F


def labelled_images(n: int) -> tuple[list[str], list[str], list[str]]:
    """(image paths, colours, shapes) of the first ``n`` training images asked "what is the <colour> shape?"."""
    from easy_vqa import get_train_image_paths, get_train_questions

    questions, answers, image_ids = get_train_questions()
    paths = get_train_image_paths()
    colour, shape = {}, {}
    for q, a, i in zip(questions, answers, image_ids):
        m = re.match(r"what is the (\w+) shape\?", q)
        if m:
            shape[i], colour[i] = a, m.group(1)
    keep = sorted(shape)[:n]
    return [paths[i] for i in keep], [colour[i] for i in keep], [shape[i] for i in keep]


def pooled_states(preset: str, paths: list[str], batch: int = 50) -> list[np.ndarray]:
    """Each hidden state's patch tokens pooled to 3 × 3, flattened: ``[images, 9 · width]`` per state."""
    from PIL import Image

    from vlm_core.model.vision.encoder import build_vision_tower
    from vlm_core.presets import get_preset

    tower = build_vision_tower(get_preset(preset).vision)
    side = int(tower.num_patches ** 0.5)
    out: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for s in range(0, len(paths), batch):
            states = tower(tower.preprocess([Image.open(p) for p in paths[s:s + batch]]))
            for k, h in enumerate(states):
                h = h[:, -tower.num_patches:]  # patch tokens (a ViT's CLS first)
                grid = h.transpose(1, 2).reshape(h.shape[0], h.shape[2], side, side)
                if len(out) <= k:
                    out.append([])
                out[k].append(F.adaptive_avg_pool2d(grid, 3).flatten(1))
    return [torch.cat(parts).numpy() for parts in out]


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="local")
    p.add_argument("--images", type=int, default=600)
    args = p.parse_args()
    torch.set_num_threads(2)
    paths, colours, shapes = labelled_images(args.images)
    print(f"{args.preset}: {len(paths)} images, {len(set(colours))} colours, {len(set(shapes))} shapes")
    print("| hidden state | colour | shape |\n|---|---|---|")
    for k, x in enumerate(pooled_states(args.preset, paths)):
        x = x[:, x.std(0) > 0]  # zero padding and constant channels out
        x = (x - x.mean(0)) / x.std(0)
        acc = [cross_val_score(LogisticRegression(max_iter=300, C=0.1), x, y, cv=3).mean() for y in (colours, shapes)]
        print(f"| {k} | {acc[0]:.3f} | {acc[1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
