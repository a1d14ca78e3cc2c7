"""Attention kernels at the trainer's sizes: PyTorch's SDPA backends (cuDNN, flash, memory-efficient),
forward and backward, on batches shaped like SmolLM2-135M's training batches at JumpStart's batch 4
(9 query heads over 3 key-value heads, 64 wide, bf16, causal), with grouped keys and values
(``enable_gqa``, what transformers passes without a padding mask) and with repeated ones, and the
masked case the trainer had before session 20 (a boolean padding-and-causal mask, repeated keys).

Each call is timed with CUDA events around it, after five untimed calls: at these sizes the figures
include each kernel's launch latency, as a training step's do. A backend that cannot run a case says
why. It answered whether the trainer should steer SDPA away from cuDNN's kernel (README, Benchmarks,
session 20: it should not).

Run (GPU): python bench/bench_attention.py --lengths 384 768 1024
"""

from __future__ import annotations

import argparse
from typing import Any


def time_attention(backend: Any, length: int, grouped: bool, masked: bool, iterations: int) -> str:
    """Mean forward and backward microseconds of one attention call, or why the backend cannot run it."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    batch, heads, key_value_heads, width = 4, 9, 3, 64
    options: dict[str, Any] = {"device": "cuda", "dtype": torch.bfloat16}
    query = torch.randn(batch, heads, length, width, requires_grad=True, **options)
    kv_heads = key_value_heads if grouped else heads
    key = torch.randn(batch, kv_heads, length, width, requires_grad=True, **options)
    value = torch.randn(batch, kv_heads, length, width, requires_grad=True, **options)
    gradient = torch.randn(batch, heads, length, width, **options)
    mask: dict[str, Any] = {"is_causal": True}
    if masked:
        causal = torch.ones(length, length, device="cuda", dtype=torch.bool).tril()
        mask = {"attn_mask": causal[None, None].expand(batch, 1, length, length).clone()}

    def call() -> Any:
        return F.scaled_dot_product_attention(query, key, value, enable_gqa=grouped, **mask)

    try:
        with sdpa_kernel([backend]):
            for _ in range(5):
                call().backward(gradient)
            forward = backward = 0.0
            for _ in range(iterations):
                start, middle, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
                start.record()
                output = call()
                middle.record()
                output.backward(gradient)
                end.record()
                torch.cuda.synchronize()
                forward += start.elapsed_time(middle)
                backward += middle.elapsed_time(end)
    except RuntimeError as error:
        return f"cannot run: {str(error).splitlines()[0][:80]}"
    return f"forward {forward / iterations * 1000:7.1f} us, backward {backward / iterations * 1000:7.1f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[384, 768, 1024])
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()

    import warnings

    import torch
    from torch.nn.attention import SDPBackend

    if not torch.cuda.is_available():
        raise SystemExit("bench_attention.py times CUDA kernels: run it on a machine with an NVIDIA GPU")
    warnings.filterwarnings("ignore", category=UserWarning)  # a backend that cannot run says so in its row
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    backends = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)
    for length in args.lengths:
        for grouped, masked, case in ((True, False, "causal, grouped keys"), (False, False, "causal, repeated keys"),
                                      (False, True, "padding mask, repeated keys")):
            for backend in backends:
                print(f"{length:>5} {case:<28} {backend.name:<20} "
                      f"{time_attention(backend, length, grouped, masked, args.iterations)}", flush=True)


if __name__ == "__main__":
    main()
