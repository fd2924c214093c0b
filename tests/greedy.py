"""A chat answer computed another way: greedy decoding by hand, one full forward pass per new token (no KV cache,
no ``generate``), from the prompt ``vlm-sweep chat`` builds. Helpers for the tests, not a test module.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_tokens(model, pixel_values: torch.Tensor, question: str, max_new_tokens: int) -> list[int]:
    """The new tokens of a greedy answer to ``question`` about the image ``pixel_values`` ([1, 3, H, W]): the
    user turn is the image marker, a newline and the question, in the training chat format with its generation
    header; it stops after an end-of-turn / EOS token (kept) or ``max_new_tokens``."""
    model.eval()
    enc = model.formatter.encode_prompt([{"from": "human", "value": f"{model.image_token.text}\n{question}"}])
    ids = torch.tensor([enc.input_ids])
    stop = {model.tokenizer.eos_token_id, *model.formatter.stop_token_ids}
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(ids, torch.ones_like(ids), pixel_values=pixel_values).logits[0, -1]
        token = int(logits.argmax())
        new.append(token)
        if token in stop:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
    return new


def greedy_answer(model, pixel_values: torch.Tensor, question: str, max_new_tokens: int) -> tuple[str, list[int]]:
    """(the reply as ``vlm-sweep chat`` prints it: special tokens dropped, stripped; the tokens it comes from)."""
    tokens = greedy_tokens(model, pixel_values, question, max_new_tokens)
    return model.tokenizer.decode(tokens, skip_special_tokens=True).strip(), tokens
