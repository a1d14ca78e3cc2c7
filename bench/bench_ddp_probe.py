"""A plain data-parallel loop, no trainer: what the GPUs and NCCL of a machine allow, beside which
``bench_train.py --gpus`` reads pvbuild's trainer.

The SmolLM2-135M shape (random init), bf16 autocast over fp32 weights, fused AdamW, a fixed batch of
B sequences of 768 random tokens, PyTorch's DistributedDataParallel over NCCL; 5 untimed steps, then
the mean of 30. Prints ms a step and tokens/s (all processes).

Run: python bench/bench_ddp_probe.py 32                      (one GPU)
     torchrun --nproc_per_node 2 bench/bench_ddp_probe.py 32  (two; add ``tuned`` for DDP with
     gradient_as_bucket_view, static_graph and 100 MB buckets)
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

SEQUENCE = 768
STEPS = 30


def main() -> None:
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    torch.cuda.set_device(rank)
    if world > 1:
        dist.init_process_group("nccl")
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         max_position_embeddings=2048)
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)
    model.to("cuda")
    tuned = "tuned" in sys.argv[2:]  # fewer gradient copies, a graph traced once, fewer buckets
    network = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[rank], gradient_as_bucket_view=tuned, static_graph=tuned,
        bucket_cap_mb=100 if tuned else 25) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, config.vocab_size, (batch, SEQUENCE), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = network(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(STEPS):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / STEPS
    if rank == 0:
        print(f"{world} GPU(s), batch {batch} each: {seconds * 1000:.1f} ms a step, "
              f"{batch * SEQUENCE * world / seconds:,.0f} tokens/s", flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
