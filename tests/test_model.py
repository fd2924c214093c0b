"""The VLM: each sample's image at its own position; batching and padding change nothing."""

from __future__ import annotations

import pytest
import torch

from vlm_core.data.dataset import Collator
from vlm_core.evaluation.inference import answer
from vlm_core.model.conversation import IGNORE_INDEX

CONVS = [
    [{"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": "Blue."}],
    [{"from": "human", "value": "Please look at this picture carefully and tell me what shape it shows.\n<image>"},
     {"from": "gpt", "value": "It shows a large triangle."},
     {"from": "human", "value": "Is it big?"}, {"from": "gpt", "value": "yes"}],
    [{"from": "human", "value": "Hmm <image> what?"}, {"from": "gpt", "value": "A circle, drawn in red."}],
]


def _items(model):
    items = []
    for i, conv in enumerate(CONVS):
        enc = model.formatter.encode(conv)
        items.append({"id": str(i), "input_ids": enc.input_ids, "labels": enc.labels})
    return items


def _per_sample_loss(out, row):
    logits, labels = out.logits[row, :-1], out.labels[row, 1:]
    keep = labels != IGNORE_INDEX
    return torch.nn.functional.cross_entropy(logits[keep], labels[keep])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_equals_each_sample_alone(tiny_model, padding_side):
    model = tiny_model
    torch.manual_seed(0)
    pixels = torch.randn(len(CONVS), 3, model.vision.image_size, model.vision.image_size)
    items = _items(model)
    positions = [it["input_ids"].index(model.image_token.id) for it in items]
    assert len(set(positions)) == len(positions)  # the image really sits at different positions
    collate = Collator(model.tokenizer.pad_token_id, padding_side=padding_side)
    with torch.no_grad():
        batch = collate(items)
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], pixel_values=pixels)
        for i, item in enumerate(items):
            alone_batch = collate([item])
            alone = model(alone_batch["input_ids"], alone_batch["attention_mask"], alone_batch["labels"],
                          pixel_values=pixels[i:i + 1])
            real = out.attention_mask[i].bool()
            assert real.sum() == alone.logits.shape[1]
            torch.testing.assert_close(out.logits[i][real], alone.logits[0], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(_per_sample_loss(out, i), alone.loss, atol=2e-5, rtol=1e-4)


def test_image_features_land_at_each_samples_own_position(tiny_model):
    """Swapping the images of two samples changes exactly those samples' post-image logits."""
    model = tiny_model
    items = _items(model)
    batch = Collator(model.tokenizer.pad_token_id)(items)
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, model.vision.image_size, model.vision.image_size)
    swapped = pixels[[0, 2, 1]]
    with torch.no_grad():
        a = model(batch["input_ids"], batch["attention_mask"], pixel_values=pixels).logits
        b = model(batch["input_ids"], batch["attention_mask"], pixel_values=swapped).logits
    assert torch.allclose(a[0], b[0])
    for row in (1, 2):
        pos = items[row]["input_ids"].index(model.image_token.id)
        assert torch.allclose(a[row, :pos], b[row, :pos], atol=1e-6)  # causal: nothing before the image moves
        assert not torch.allclose(a[row, pos:], b[row, pos:])


def test_spliced_labels_mask_image_tokens_and_keep_targets(tiny_model):
    model = tiny_model
    items = _items(model)
    batch = Collator(model.tokenizer.pad_token_id)(items)
    emb = torch.zeros(3, model.num_image_tokens, model.lm.config.hidden_size)
    s = model.splice(batch["input_ids"], batch["attention_mask"], emb, batch["labels"])
    n = model.num_image_tokens
    assert s.inputs_embeds.shape[1] == batch["input_ids"].shape[1] + n - 1
    for i, it in enumerate(items):
        pos = it["input_ids"].index(model.image_token.id)
        assert (s.labels[i, pos:pos + n] == IGNORE_INDEX).all()
        kept = s.labels[i][s.labels[i] != IGNORE_INDEX].tolist()
        assert kept == [lab for lab in it["labels"] if lab != IGNORE_INDEX]
        assert s.attention_mask[i].sum() == len(it["input_ids"]) + n - 1


def test_rows_without_exactly_one_image_token_are_refused(tiny_model):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model.splice(ids, torch.ones_like(ids), torch.zeros(1, tiny_model.num_image_tokens, 64))


def test_batched_generation_equals_one_by_one(tiny_model):
    """Left-padded batched generation gives every prompt the tokens it gets alone."""
    from PIL import Image

    from vlm_core.evaluation.inference import build_prompt_batch

    model = tiny_model
    rng = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(40 + 8 * i, 48, 3, generator=rng) * 255).byte().numpy()) for i in range(3)]
    questions = ["What is it?", "Describe the colours of the shapes in the picture, please.", "Shape?"]

    def generate(imgs, qs):
        batch = build_prompt_batch(model, qs)
        out = model.generate(batch["input_ids"], batch["attention_mask"], pixel_values=model.vision.preprocess(imgs),
                             max_new_tokens=4, min_new_tokens=4, return_dict_in_generate=True, output_scores=True)
        return out.sequences.tolist(), torch.stack(out.scores, 1)  # scores: [B, steps, vocab]

    batched, batched_scores = generate(images, questions)
    for i, (img, q) in enumerate(zip(images, questions)):
        single, single_scores = generate([img], [q])
        assert batched[i] == single[0]
        torch.testing.assert_close(batched_scores[i], single_scores[0], atol=2e-5, rtol=1e-4)
    # different images/prompts give different next-token distributions (the check above is not vacuous)
    assert not torch.allclose(batched_scores[0], batched_scores[1])
    # the text API decodes the same tokens
    assert answer(model, images[:1], questions[:1], max_new_tokens=4, min_new_tokens=4) == [
        model.tokenizer.decode(batched[0], skip_special_tokens=True).strip()]


def test_pickled_weights_are_refused_with_the_fix(tmp_path):
    """Only safetensors are loaded: a folder holding just a pytorch_model.bin (a pickle) is named, not loaded."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vlm_core.assets.hub import ModelSourceError
    from vlm_core.config import VisionConfig
    from vlm_core.model.vision.encoder import build_vision_tower

    model = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=32, patch_size=16))
    model.save_pretrained(tmp_path / "safe")
    (tmp_path / "pickled").mkdir()  # as older transformers wrote them (this one writes safetensors only)
    model.config.save_pretrained(tmp_path / "pickled")
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    assert build_vision_tower(VisionConfig(source=str(tmp_path / "safe"))).num_layers == 2
    with pytest.raises(ModelSourceError,
                       match=r"has only pytorch_model\.bin, no safetensors weights.*vlm-sweep assets convert "):
        build_vision_tower(VisionConfig(source=str(tmp_path / "pickled")))
