"""Fine-tuning with TRL's ``SFTTrainer``, configured from JumpStart's hyperparameter names.

What is pvbuild's here is the mapping, not the training loop: ``epoch``, ``learning_rate``,
``per_device_train_batch_size``, ``lora_r``/``lora_alpha``/``lora_dropout``, ``max_input_length``,
``validation_split_ratio``, ``seed`` and the 8-/4-bit options become an ``SFTConfig`` and a peft
``LoraConfig``. The examples are tokenised by ``sft_data`` (loss on the completion or on the
assistant turns), handed to TRL pre-tokenised with their labels. On a GPU: bf16 where the card has
it, batches grouped by length (or padding-free where flash attention is installed), fused AdamW,
QLoRA through bitsandbytes when asked, batches collated by worker processes and copied without
blocking; the training step leaves out TRL's per-step metrics, scores the labelled tokens at positions
found on the host (one GPU), drops right-padded batches' padding mask and deals length-grouped batches evenly
over several GPUs (``services.sft_trainer``). On the CPU: fp32, threads by model size
(``use_cpu_threads``). A NaN or infinite loss stops the job with the step it happened at. LoRA is
merged into the weights before saving, so the output directory is a plain Hugging Face model.
"""

from __future__ import annotations

import gc
import io
import logging
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvbuild.errors import PvbuildError
from pvbuild.progress import Progress, say
from pvbuild.services.sft_data import (
    Encoded,
    LongPrompts,
    TrainingDataError,
    channel_lines,
    encode,
    split_validation,
)

LORA_TARGETS = ["q_proj", "v_proj"]  # JumpStart's Llama LoRA targets
# What the local trainer takes beyond a model's defaults (``sft_config`` maps them); local-only base
# models accept these.
LOCAL_HYPERPARAMETERS = ("per_device_eval_batch_size", "gradient_accumulation_steps", "gradient_checkpointing",
                         "int8_quantization", "int4_quantization", "max_train_samples", "max_val_samples")
LOSS_POINTS = 200  # at most this many logged losses per run on the CPU
# On a GPU each log waits for the GPU (a host sync), and the host must then get ahead of it again: the later
# half of a compiled run at batch 4 went 15-30 % faster with 25 logs than with 200 (README, Benchmarks, session 20).
GPU_LOSS_POINTS = 25


class NonFiniteLoss(PvbuildError):
    """The loss became NaN or infinite: the job fails rather than saving a broken model."""


@dataclass
class FinetuneResult:
    """Losses and counts of one fine-tuning run."""

    step_losses: list[float] = field(default_factory=list)  # one per logging interval (``log_every``)
    epoch_train_loss: list[float] = field(default_factory=list)
    epoch_validation_loss: list[float] = field(default_factory=list)
    train_examples: int = 0
    validation_examples: int = 0
    train_tokens: int = 0
    dropped: list[str] = field(default_factory=list)  # lines without room for a completion (sft_data)
    truncated: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0
    first_step_seconds: float = 0.0  # of train_seconds: set-up (DDP, kernels' first compiles) shows here
    second_half_seconds: float = 0.0  # of train_seconds: the later half of the steps (after set-up and warm-up)
    steps: int = 0  # optimizer steps
    processes: int = 1  # data-parallel processes (one per GPU)
    global_batch_size: int = 0  # examples per optimizer step, over every process

    def metrics(self) -> dict[str, float]:
        found = {"train_loss": self.epoch_train_loss[-1] if self.epoch_train_loss else math.nan,
                 "train_examples": self.train_examples, "validation_examples": self.validation_examples,
                 "train_tokens": self.train_tokens, "dropped_examples": len(self.dropped),
                 "truncated_prompts": self.truncated, "processes": self.processes,
                 "global_batch_size": self.global_batch_size}
        if self.epoch_validation_loss:
            found["validation_loss"] = self.epoch_validation_loss[-1]
        return found  # no timings: the same inputs give the same record and report


def quiet_transformers() -> None:
    """Keep transformers' own progress bars and advice out of pvbuild's output."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def pick_device(requested: str) -> str:
    """``auto``: CUDA when there is a GPU, else the CPU."""
    import torch

    return requested if requested != "auto" else "cuda" if torch.cuda.is_available() else "cpu"


SMALL_MODEL = 20_000_000  # parameters: below, one CPU thread (see use_cpu_threads); above, every core


def use_cpu_threads(model: Any) -> int:
    """Set and return the threads for CPU training and serving of ``model``: ``OMP_NUM_THREADS`` when
    the user set it; else one for a small model and every core for a larger one. On 2-core VMs
    PyTorch's default of one per core once trained the tiny model 18x slower (a first doit of 69 s
    instead of 16 s), though on a quiet one two threads trained it 1.6x faster (bench_train.py,
    2026-11-25): one thread bounds the worst case where the model trains in seconds anyway.
    SmolLM2-135M trained 1.8x faster on two threads than on one."""
    import torch

    try:
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = 1 if model.num_parameters() < SMALL_MODEL else cores
    torch.set_num_threads(threads)
    return threads


def _this_process_device(device: str) -> str:
    """Under a launcher, each process trains on its own GPU (``LOCAL_RANK``)."""
    if device != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    import torch

    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return f"cuda:{os.environ['LOCAL_RANK']}"


def _flag(hyperparameters: Mapping[str, Any], name: str) -> bool:
    return str(hyperparameters.get(name, "False")).lower() == "true"


def precision(device: str) -> str:
    """bf16 (autocast) on a GPU that has it, Ampere and later; else fp32."""
    import torch

    return "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"


# training.compile = "auto" compiles from this many optimizer steps on: measured on lent H100s (README,
# Benchmarks, sessions 18 and 20), SmolLM2's shape first compiled in 147-220 s with an empty cache, and a step
# at batch 4 then took about 30 ms instead of 134-207 ms: a shorter run on a machine whose cache is empty
# would lose more than it gained.
COMPILE_FROM_STEPS = 2000
COMPILED_PAD = 128  # batches of a compiled backbone are padded to a multiple of this: one CUDA graph a length


class CompileRefused(PvbuildError):
    """``training.compile = true`` where the compiled backbone cannot run (no CUDA GPU, several processes)."""


def compiles(setting: Any, device: str, processes: int, steps: int) -> bool:
    """``training.compile``: ``true`` compiles the backbone (``compile_backbone``), ``false`` never does, and
    ``"auto"`` compiles on one CUDA GPU with SDPA attention when the run has ``COMPILE_FROM_STEPS`` optimizer
    steps or more. Several processes are not compiled: DDP's gradient hooks would run after a replayed
    backward graph, an arrangement that has not been measured."""
    import torch

    wanted = str(setting).lower()
    if wanted == "false":
        return False
    usable = device.startswith("cuda") and processes == 1 and hasattr(torch.compiler, "set_stance")
    if wanted == "true":
        if not usable:
            raise CompileRefused(f"training.compile = true needs one CUDA GPU and torch 2.6 or later (here: {device}, "
                                 f"{processes} process(es), torch {torch.__version__}); set it to \"auto\" or false")
        return True
    return usable and _attention(device) == "sdpa" and steps >= COMPILE_FROM_STEPS


def compile_backbone(model: Any, strict: bool) -> None:
    """Compile ``model``'s backbone (its decoder stack) in place into CUDA graphs (torch.compile's
    ``reduce-overhead``): a small model's step is bound by the host launching its ~2,000 kernels one by
    one, while a replayed graph launches them in one call (and inductor fuses the element-wise ones).
    The trainer marks the batches' length dynamic (``PvbuildSFTTrainer._loss_at``), so the backbone compiles
    once for every length (147 s with an empty cache on an H100, against 190-220 s for a first length and then
    the rest; ``dynamic=True`` took 248 s), one graph is recorded a padded length, and the weights keep their
    names (``Module.compile``). The LM head and loss stay outside: they score only the labelled
    tokens, whose count changes with every batch (``services.sft_trainer``). Unless ``strict``
    (``training.compile = true``), a part that fails to compile runs eagerly instead: "auto" must not fail
    a job that would train without it."""
    import torch

    from pvbuild.services.sft_trainer import causal_model

    torch._dynamo.config.suppress_errors = not strict
    dynamo_log = logging.getLogger("torch._dynamo")
    if not any(isinstance(existing, _UnanalysedTritonKernels) for existing in dynamo_log.filters):
        dynamo_log.addFilter(_UnanalysedTritonKernels())
    causal_model(model).base_model.compile(mode="reduce-overhead")


class _UnanalysedTritonKernels(logging.Filter):
    """Where an earlier run in the process applied Liger's kernels (they patch transformers' classes), torch
    compiles their Triton code into the graph and warns, with a traceback, for each kernel whose writes it
    cannot analyse (7,000 lines in one run on an H100): it then assumes every input written, which is
    correct, so those warnings are left out; Dynamo's others stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Encountered an exception in identify_")


def liger_kernels(device: str, compiled: bool = False) -> bool:
    """Liger's fused layer kernels (RMSNorm, SwiGLU, RoPE) where its package is installed on a CUDA machine:
    fewer kernel launches, and a 135M model's step is bound by launches (``bench_train.py``). TRL keeps its own
    fused LM head and loss. Not with a compiled backbone, whose graphs fuse those layers themselves."""
    import importlib.util

    return device.startswith("cuda") and importlib.util.find_spec("liger_kernel") is not None and not compiled


def _attention(device: str) -> str:
    """Flash attention where its package is installed (padding-free batches then), else PyTorch's SDPA."""
    import importlib.util

    return "flash_attention_2" if device.startswith("cuda") and importlib.util.find_spec("flash_attn") else "sdpa"


def lora_config(hyperparameters: Mapping[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=int(hyperparameters["lora_r"]), lora_alpha=int(hyperparameters["lora_alpha"]),
                      lora_dropout=float(hyperparameters["lora_dropout"]), task_type="CAUSAL_LM",
                      target_modules=LORA_TARGETS)


def quantization(hyperparameters: Mapping[str, Any], device: str) -> Any:
    """JumpStart's ``int8_quantization`` / ``int4_quantization`` as bitsandbytes QLoRA (CUDA only)."""
    eight, four = _flag(hyperparameters, "int8_quantization"), _flag(hyperparameters, "int4_quantization")
    if not (eight or four):
        return None
    if not device.startswith("cuda"):
        raise TrainingDataError("int8_quantization/int4_quantization need a CUDA GPU (bitsandbytes); "
                                "set them to False to train on this machine")
    import torch
    from transformers import BitsAndBytesConfig

    if four:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def sft_config(hyperparameters: Mapping[str, Any], output_dir: Path, device: str, steps: int,
               has_validation: bool, compiled: bool = False) -> Any:
    """JumpStart's names as an ``SFTConfig`` (the rest stays at TRL's defaults)."""
    from trl import SFTConfig

    dtype = precision(device)
    padding_free = _attention(device) == "flash_attention_2"
    config = SFTConfig(
        output_dir=str(output_dir), num_train_epochs=int(hyperparameters["epoch"]),
        learning_rate=float(hyperparameters["learning_rate"]),
        per_device_train_batch_size=int(hyperparameters["per_device_train_batch_size"]),
        per_device_eval_batch_size=int(hyperparameters.get("per_device_eval_batch_size")
                                       or hyperparameters["per_device_train_batch_size"]),
        gradient_accumulation_steps=int(hyperparameters.get("gradient_accumulation_steps", 1)),
        **_checkpointing(_flag(hyperparameters, "gradient_checkpointing")),
        max_length=int(hyperparameters["max_input_length"]), seed=int(hyperparameters.get("seed", 42)),
        bf16=dtype == "bf16", use_cpu=device == "cpu", padding_free=padding_free,
        use_liger_kernel=liger_kernels(device, compiled),
        pad_to_multiple_of=(COMPILED_PAD if compiled else 64) if device.startswith("cuda") and not padding_free
        else None,
        train_sampling_strategy="random" if padding_free else "group_by_length",
        optim="adamw_torch_fused" if device.startswith("cuda") else "adamw_torch",
        # On a GPU, batches are collated by two worker processes and copied from pinned memory without
        # blocking, so the host keeps queuing kernels (a 135M model's step is bound by the host); on the
        # CPU the cores train. The workers end with each pass over the data (not persistent): training
        # runs inside the doit process on one GPU, which must not keep them afterwards.
        dataloader_num_workers=2 if device.startswith("cuda") else 0, dataloader_pin_memory=device.startswith("cuda"),
        accelerator_config={"non_blocking": device.startswith("cuda")},
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=log_every(steps, device), logging_nan_inf_filter=False,
        eval_strategy="epoch" if has_validation else "no",
        save_strategy="no", report_to="none", disable_tqdm=True,
        ddp_find_unused_parameters=False,  # every trainable parameter gets a gradient: no search a step
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    if device.startswith("cuda") and "LOCAL_RANK" not in os.environ and config.n_gpu > 1:
        # One process on a machine of several GPUs (training.gpus = 1): one GPU. Left alone, the Trainer
        # would wrap the model in nn.DataParallel, which TRL refuses; several GPUs go through services.launch.
        config._n_gpu = 1
    return config


def _checkpointing(enabled: bool) -> dict[str, Any]:
    """transformers 5.x renamed ``gradient_checkpointing`` to ``activation_checkpointing``."""
    from dataclasses import fields

    from trl import SFTConfig

    names = {option.name for option in fields(SFTConfig)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def log_every(steps: int, device: str = "cpu") -> int:
    """Optimizer steps between two logged losses: at most ``LOSS_POINTS`` a run, ``GPU_LOSS_POINTS`` on a GPU."""
    return max(1, math.ceil(steps / (GPU_LOSS_POINTS if device.startswith("cuda") else LOSS_POINTS)))


def _dataset(encoded: Encoded) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [example.input_ids for example in encoded.examples],
                              "labels": [example.labels for example in encoded.examples]})


def _callbacks(progress: Progress, epochs: int, timing: dict[str, float]) -> list[Any]:
    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        """Progress per step; a NaN or infinite loss ends the job naming the step."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 1:
                timing["first_step"] = time.monotonic()
            if state.global_step == state.max_steps // 2:
                timing["halfway"] = time.monotonic()
            if state.global_step == state.max_steps:
                timing["last_step"] = time.monotonic()  # before the epoch's evaluation
            progress.note = f"epoch {min(epochs, math.floor(state.epoch or 0) + 1)}/{epochs}"
            progress.advance()

        def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> None:
            for name in ("loss", "eval_loss"):
                value = (logs or {}).get(name)
                if value is not None and not math.isfinite(float(value)):
                    raise NonFiniteLoss(f"the {'training' if name == 'loss' else 'validation'} loss became "
                                        f"{value} at step {state.global_step} (epoch {state.epoch:.2f}); lower "
                                        "learning_rate, or look for examples with nothing to learn")
            if logs and "loss" in logs:
                progress.note += f", loss {float(logs['loss']):.3f}"

    return [Watch()]


PROFILED_STEPS = (6, 16)  # PVBUILD_TORCH_PROFILE=1: after the first shapes and kernel compiles


def profiled_steps(setting: str) -> tuple[int, int]:
    """``PVBUILD_TORCH_PROFILE``: ``1`` profiles ``PROFILED_STEPS``; ``FIRST:LAST`` those optimizer steps (a
    compiled backbone records its graphs for a while: its steady state shows only later)."""
    if ":" not in setting:
        return PROFILED_STEPS
    first, _, last = setting.partition(":")
    if not (first.isdigit() and last.isdigit() and 0 < int(first) < int(last)):
        raise ValueError(f"PVBUILD_TORCH_PROFILE={setting}: expected 1 or FIRST:LAST optimizer steps, e.g. 200:210")
    return int(first), int(last)


def _profiler_callback(steps: tuple[int, int]) -> Any:
    """For developers (``PVBUILD_TORCH_PROFILE=1`` or ``=FIRST:LAST``, CUDA): torch.profiler over ``steps``, its
    host and GPU tables printed by each process to its output (the training log when launched)."""
    import torch
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        def __init__(self) -> None:
            self.profiler: Any = None
            self.started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == steps[0]:
                torch.cuda.synchronize()
                self.started = time.perf_counter()
                activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == steps[1] and self.profiler is not None:
                torch.cuda.synchronize()
                seconds = time.perf_counter() - self.started
                self.profiler.__exit__(None, None, None)
                found = self.profiler.key_averages()
                print(f"PROFILE rank {os.environ.get('RANK', '0')}: {seconds:.3f} s for steps {steps}\n"
                      f"{found.table(sort_by='self_cpu_time_total', row_limit=25)}\n"
                      f"{found.table(sort_by='self_cuda_time_total', row_limit=12)}", file=sys.stderr, flush=True)
                self.profiler = None

    return Profile()


def _losses(log_history: Sequence[Mapping[str, Any]], epochs: int) -> tuple[list[float], list[float], list[float]]:
    """Step losses, each epoch's mean training loss and each epoch's validation loss, from the trainer's logs."""
    steps = [(float(entry["epoch"]), float(entry["loss"])) for entry in log_history if "loss" in entry]
    per_epoch = []
    for epoch in range(1, epochs + 1):
        inside = [loss for at, loss in steps if epoch - 1 < at <= epoch + 1e-9]
        if inside:
            per_epoch.append(sum(inside) / len(inside))
    validation = [float(entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    return [loss for _, loss in steps], per_epoch, validation


def _at_most(lines: list[Any], limit: Any) -> list[Any]:
    """JumpStart's ``max_train_samples`` / ``max_val_samples``: the first ``limit`` lines; -1 or unset: all."""
    count = int(limit) if limit not in (None, "") else -1
    return lines if count < 0 else lines[:count]


def _examples(tokenizer: Any, train_dir: Path, validation_dir: Path | None, hyperparameters: Mapping[str, Any],
              policy: LongPrompts) -> tuple[Encoded, Encoded]:
    """The training and validation examples of the channels, as JumpStart selects them."""
    seed, chat = int(hyperparameters.get("seed", 42)), _flag(hyperparameters, "chat_dataset")
    max_length = int(hyperparameters["max_input_length"])
    train_lines, template = channel_lines(train_dir)
    validation_lines = channel_lines(validation_dir)[0] if validation_dir else []
    if not validation_lines:
        train_lines, validation_lines = split_validation(
            train_lines, float(hyperparameters.get("validation_split_ratio", 0.0)), seed)
    train_lines = _at_most(train_lines, hyperparameters.get("max_train_samples"))
    validation_lines = _at_most(validation_lines, hyperparameters.get("max_val_samples"))
    train = encode(tokenizer, train_lines, template, chat, max_length, policy)
    if not train.examples:
        raise TrainingDataError(f"{train_dir}: no training examples"
                                + (f" ({len(train.dropped)} left out: no room for a completion within "
                                   f"max_input_length {max_length})" if train.dropped else ""))
    return train, encode(tokenizer, validation_lines, template, chat, max_length, policy)


def _load_model(model_source: Path | str, device: str, hyperparameters: Mapping[str, Any]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    quantized = quantization(hyperparameters, device)
    # fp32 weights, bf16 compute (autocast, SFTConfig.bf16): AdamW's updates of bf16 weights round
    # away: bench_train's 135M model ended at a validation loss of 3.01 in pure bf16, 2.51 so.
    model = AutoModelForCausalLM.from_pretrained(str(model_source), dtype=torch.float32,
                                                 attn_implementation=_attention(device), quantization_config=quantized)
    return model if quantized is not None else model.to(device)  # type: ignore[arg-type]


def finetune(model_source: Path | str, train_dir: Path, validation_dir: Path | None,
             hyperparameters: Mapping[str, Any], output_dir: Path, lora: bool, device: str = "auto",
             long_prompts: LongPrompts | str = LongPrompts.DROP, compile_setting: Any = "auto") -> FinetuneResult:
    """Train the model at ``model_source`` on the channel directories; save it to ``output_dir``.
    ``compile_setting`` is ``training.compile`` (``compiles``)."""
    from transformers import AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from pvbuild.services.sft_trainer import PvbuildSFTTrainer

    quiet_transformers()
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(model_source))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train, validation = _examples(tokenizer, train_dir, validation_dir, hyperparameters, LongPrompts(long_prompts))
    device = _this_process_device(pick_device(device))
    epochs = int(hyperparameters["epoch"])
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by a launcher (services.launch)
    batch = int(hyperparameters["per_device_train_batch_size"]) * int(
        hyperparameters.get("gradient_accumulation_steps", 1)) * processes
    steps = epochs * math.ceil(len(train.examples) / batch)  # optimizer steps
    result = FinetuneResult(train_examples=len(train.examples), validation_examples=len(validation.examples),
                            train_tokens=train.tokens * epochs, dropped=train.dropped + validation.dropped,
                            truncated=train.truncated + validation.truncated, processes=processes,
                            global_batch_size=batch, steps=steps)
    compiled = compiles(compile_setting, device, processes, steps)
    model = _load_model(model_source, device, hyperparameters)
    if device == "cpu":
        use_cpu_threads(model)
    # One progress line however many processes train: the first one's.
    timing: dict[str, float] = {}
    progress = Progress("train", steps, stream=None if int(os.environ.get("RANK", "0")) == 0 else io.StringIO())
    with warnings.catch_warnings():  # TRL calls Liger deprecated in favour of Hub kernels, which need the network
        warnings.filterwarnings("ignore", message=".*use_liger_kernel.*", category=FutureWarning)
        trainer = PvbuildSFTTrainer(
            model=model, args=sft_config(hyperparameters, output_dir.with_name(output_dir.name + ".trainer"), device,
                                         steps, bool(validation.examples), compiled),
            train_dataset=_dataset(train), eval_dataset=_dataset(validation) if validation.examples else None,
            processing_class=tokenizer, peft_config=lora_config(hyperparameters) if lora else None,
            callbacks=_callbacks(progress, epochs, timing))
    if compiled:
        compile_backbone(trainer.model, strict=str(compile_setting).lower() == "true")
        trainer.backbone_compiled = True
        say(f"train: compiling the model's layers into CUDA graphs (training.compile = {compile_setting}, {steps} "
            "steps): the first step takes minutes where torch's cache is empty, seconds after")
    if os.environ.get("PVBUILD_TORCH_PROFILE") and device.startswith("cuda"):
        trainer.add_callback(_profiler_callback(profiled_steps(os.environ["PVBUILD_TORCH_PROFILE"])))
    for printer in (PrinterCallback, ProgressCallback):  # pvbuild's own progress line says it all
        trainer.remove_callback(printer)
    try:
        training_started = time.monotonic()
        trainer.train()
        result.first_step_seconds = timing.get("first_step", training_started) - training_started
        if "halfway" in timing and "last_step" in timing:  # a run of one step has no later half
            result.second_half_seconds = timing["last_step"] - timing["halfway"]
        evaluating = sum(float(entry.get("eval_runtime", 0.0)) for entry in trainer.state.log_history)
        result.train_seconds = time.monotonic() - training_started - evaluating  # training alone, for tokens/s
    finally:
        progress.close()
    result.step_losses, result.epoch_train_loss, result.epoch_validation_loss = _losses(trainer.state.log_history,
                                                                                        epochs)
    if trainer.is_world_process_zero():  # one model, however many processes trained it
        _save(trainer.model, tokenizer, output_dir, lora)
        shutil.rmtree(str(trainer.args.output_dir), ignore_errors=True)  # the trainer's own folder: nothing kept there
    result.seconds = time.monotonic() - started
    del trainer, model
    release_gpu_memory(device, compiled)
    return result


def release_gpu_memory(device: str, compiled: bool = False) -> None:
    """Hand the GPU's cached blocks back once the model is saved: with one GPU, training runs inside the doit
    process, whose allocator would otherwise keep the model's and optimizer's memory (tens of GB for a 1B model)
    from every other process on that GPU until it exits. A compiled backbone's CUDA graphs hold their own
    memory pool and the model: torch's compile state is reset (the next compile in the process traces again,
    its kernels still come from the disk cache)."""
    if device.startswith("cuda"):
        import torch

        if compiled:
            torch._dynamo.reset()
        gc.collect()  # the Trainer's reference cycles hold the model
        torch.cuda.empty_cache()


def _save(model: Any, tokenizer: Any, output_dir: Path, lora: bool) -> None:
    merged = model.merge_and_unload() if lora else model
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
