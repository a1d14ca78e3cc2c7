"""A GPU check of ``training.compile`` in one process, as doit trains candidates one after another: each
run hands its GPU memory back (a compiled backbone's CUDA graphs hold a pool of their own), and a compiled
run after an eager one (whose Liger kernels stay patched into transformers' classes) and a compiled LoRA
run after a compiled one still train. Prints, after each run, the memory the process still reserves.

Run (a CUDA GPU): python bench/gpu_memory_release.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from bench.bench_scale import sample_markdown  # noqa: E402
from bench.bench_train import build_model, synthesize, write_channel  # noqa: E402
from pvbuild.services.finetune import finetune  # noqa: E402

work = Path(tempfile.mkdtemp())
model = build_model("tiny", None, sample_markdown(), work / "model")
lines = synthesize(AutoTokenizer.from_pretrained(str(model)), 240, (50, 200), 7)
train, val = write_channel(work / "t", lines[:200]), write_channel(work / "v", lines[200:])
hp = {"epoch": "1", "learning_rate": "1e-3", "lora_r": "8", "lora_alpha": "32", "lora_dropout": "0.05",
      "per_device_train_batch_size": "8", "seed": "42", "max_input_length": "256", "instruction_tuned": "True",
      "chat_dataset": "False", "validation_split_ratio": "0"}
for run, (setting, lora) in enumerate([("false", False), ("true", False), ("true", True), ("auto", False)]):
    started = time.time()
    result = finetune(model, train, val, hp, work / f"out{run}", lora=lora, device="cuda", compile_setting=setting)
    print(f"compile={setting} lora={lora}: {time.time() - started:.1f} s, validation loss "
          f"{result.epoch_validation_loss[-1]:.3f}; then reserved {torch.cuda.memory_reserved() / 2**20:.0f} MiB, "
          f"allocated {torch.cuda.memory_allocated() / 2**20:.0f} MiB", flush=True)
