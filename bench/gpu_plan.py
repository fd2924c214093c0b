"""The paper preset on A100s, planned from FLOPs counted on the real architectures (no GPU needed, no weights):
Llama-3.2-1B-Instruct and TinyCLIP-ViT-40M-32 are built on PyTorch's ``meta`` device from their published
configs, and one forward + backward per stage runs under ``torch.utils.flop_counter.FlopCounterMode``. Step time
assumes a model-FLOPs utilisation (``--mfu``, default 0.35) of the A100's 312 bf16 TFLOP/s; memory is the
optimizer state we keep (fp32 weights, AdamW over the trainable ones) plus activations by the usual estimate
(Korthikanti et al. 2022, no flash attention) and the fp32 logits of the loss. To be confirmed on a GPU.

    python bench/gpu_plan.py --tokens 400 --mfu 0.35
"""

from __future__ import annotations

import argparse
import json

import torch

# Published configs (hub: meta-llama/Llama-3.2-1B-Instruct, wkcn/TinyCLIP-ViT-40M-32-Text-19M-LAION400M)
LLAMA32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
                  max_position_embeddings=131072)
TINYCLIP_40M_32 = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                       image_size=224, patch_size=32)
A100_BF16 = 312e12


def count(stage: int, batch: int, tokens: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        lm = LlamaForCausalLM(LlamaConfig(**LLAMA32_1B))
        vit = CLIPVisionModel(CLIPVisionConfig(**TINYCLIP_40M_32))
    params = sum(p.numel() for p in lm.parameters())
    lm.requires_grad_(stage == 2)
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            vit(pixel_values=torch.empty(batch, 3, 224, 224, device="meta"))
    vit_flops = fc.get_total_flops()
    embeds = torch.empty(batch, tokens, LLAMA32_1B["hidden_size"], device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        mask = torch.empty(batch, 1, tokens, tokens, device="meta")  # 4-D: used as given (no data-dependent checks)
        pos = torch.empty(batch, tokens, dtype=torch.long, device="meta")
        logits = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False).logits
        logits.float().sum().backward()
    return {"stage": stage, "batch": batch, "tokens": tokens, "lm_params": params,
            "flops_per_step": fc.get_total_flops(), "encoder_flops_per_step": vit_flops,
            "flops_per_token": fc.get_total_flops() / (batch * tokens)}


def lora_params(rank: int = 16) -> int:
    """LoRA's trainable parameters on every linear layer of Llama-3.2-1B (the default ``train.lora``): r × (in + out)
    per adapted layer."""
    h, inter, layers = LLAMA32_1B["hidden_size"], LLAMA32_1B["intermediate_size"], LLAMA32_1B["num_hidden_layers"]
    kv = h * LLAMA32_1B["num_key_value_heads"] // LLAMA32_1B["num_attention_heads"]
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]  # q k v o gate up down
    return rank * layers * sum(i + o for i, o in shapes)


def memory_gb(stage: int, batch: int, tokens: int, params: int, checkpointing: bool, lora: bool = False,
              shards: int = 1) -> float:
    """Per GPU. ``shards``: FSDP over that many GPUs (``train.sharding: fsdp``, the global ``batch`` split over them):
    each holds 1/N of the fp32 weights, gradients and AdamW state, plus the bf16 gather of the root unit (the tied
    embeddings, held through the whole forward and backward) and of two decoder layers (the current and the
    prefetched one)."""
    h, layers, heads, vocab = (LLAMA32_1B[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                         "vocab_size"))
    weights = 4 * params + (4 * lora_params() if lora else 0)  # fp32 weights (+ the adapters), bf16 autocast
    # the projector's few M are left out; LoRA: gradients and AdamW moments for the adapters only
    trainable = (lora_params() if lora else params) if stage == 2 else 0
    optimizer = trainable * (4 + 8)  # grads + AdamW's two moments
    if shards > 1:
        layer = (params - vocab * h) / layers
        weights, optimizer = weights / shards + 2 * (vocab * h + 2 * layer), optimizer / shards
        batch = batch / shards
    per_layer = tokens * batch * h * (34 + 5 * heads * tokens / h)  # bytes, 16-bit activations
    acts = (2 * tokens * batch * h * layers if checkpointing else per_layer * layers)
    logits = batch * tokens * vocab * (2 + 4 + 4)  # bf16 logits, their fp32 copy and its gradient
    return (weights + optimizer + acts + logits) / 2**30


PLAN = [("stage 1, batch 12", 1, 12, "a100-37g", False, False), ("stage 1, batch 8", 1, 8, "a100-26g", False, False),
        ("stage 1, batch 8, checkpointing", 1, 8, "a100-10g", True, False),
        ("stage 2, batch 3", 2, 3, "a100-28g", False, False),
        ("stage 2, batch 3, LoRA r=16", 2, 3, "a100-28g", False, True)]
FSDP_PLAN = [("stage 2, batch 4, FSDP over 2 GPUs", 2, 4, "2 × a100-28g", 2),
             ("stage 2, batch 4, FSDP over 4 GPUs", 2, 4, "4 × a100-28g", 4)]


def main() -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=400, help="tokens per sample, image tokens included")
    ap.add_argument("--mfu", type=float, default=0.35)
    args, _ = ap.parse_known_args()
    rows = []
    for name, stage, batch, profile, ckpt, lora in PLAN:
        # LoRA back-propagates through every layer (input gradients) but computes no weight gradient for the frozen
        # LLM: counted as a frozen LLM (the adapters' own FLOPs are ~1 % of a layer's)
        c = count(1 if lora else stage, batch, args.tokens)
        flops = c["flops_per_step"] * (4 / 3 if ckpt else 1)  # recomputing the forward once more
        rows.append({"run": name, "profile": profile, "gflop_per_token": round(c["flops_per_token"] / 1e9, 2),
                     "encoder_share": round(c["encoder_flops_per_step"] / c["flops_per_step"], 4),
                     "step_s": round(flops / (A100_BF16 * args.mfu), 3),
                     "memory_gb": round(memory_gb(stage, batch, args.tokens, c["lm_params"], ckpt, lora), 1)})
    for name, stage, batch, profile, shards in FSDP_PLAN:  # each GPU computes 1/N of the global batch
        c = count(stage, batch, args.tokens)
        rows.append({"run": name, "profile": profile, "gflop_per_token": round(c["flops_per_token"] / 1e9, 2),
                     "encoder_share": round(c["encoder_flops_per_step"] / c["flops_per_step"], 4),
                     "step_s": round(c["flops_per_step"] / shards / (A100_BF16 * args.mfu), 3),
                     "memory_gb": round(memory_gb(stage, batch, args.tokens, c["lm_params"], False, shards=shards),
                                        1)})
    print(f"{args.tokens} tokens per sample, MFU {args.mfu}:")
    for r in rows:
        print(f"  {r['run']:36} {r['profile']:12} {r['gflop_per_token']:6} GFLOP/token  encoder "
              f"{100 * r['encoder_share']:.2f}% of the step  ~{r['step_s']} s/step  ~{r['memory_gb']} GB")
    return rows


if __name__ == "__main__":
    print(json.dumps(main()))
