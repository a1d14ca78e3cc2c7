"""TRL's ``SFTTrainer`` with less per-step bookkeeping, and batches dealt evenly over GPUs.

Three changes, each kept by measurement (README, "Several GPUs", session 11; "The local trainer"):

- **The training loss without TRL's per-step metrics.** TRL computes its loss from its fused LM
  head (as here), then, every step, entropy, token accuracy and a token count: four all-gathers and
  three host syncs (``.item()``) a step. A sync stops the host queuing work ahead of the GPU, and
  with several processes each one also waits for the other process's all-reduce. pvbuild records
  neither metric, so the training step skips them; evaluation is TRL's, unchanged.
- **Length-grouped batches dealt evenly over the processes.** transformers' length-grouped sampler
  sorts each megabatch by length and the launcher hands consecutive batches to the processes in
  turn, so process 0 always got the longest of each pair (4-8 % more padded tokens a step, and the
  others waited for it at every all-reduce). ``deal`` hands the examples of each step's batches out
  round-robin instead: every process gets batches of the same lengths.
- **Evaluation without compiling.** Where the backbone runs compiled (``training.compile``), evaluation
  runs it eagerly: without gradients it would be compiled, and its graphs recorded, a second time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler
from trl import SFTTrainer


def deal(order: list[int], batch: int, ranks: int) -> list[int]:
    """``order`` (examples sorted by length within each run of ``batch * ranks``) regrouped so that the
    ``ranks`` consecutive batches of each run, one per process, take its examples in turn: the longest
    to process 0, the next to process 1, ... A last run shorter than ``batch * ranks`` stays as it is."""
    step = batch * ranks
    dealt: list[int] = []
    for start in range(0, len(order), step):
        run = order[start:start + step]
        dealt += [index for rank in range(ranks) for index in run[rank::ranks]] if len(run) == step else run
    return dealt


class DealtSampler(Sampler[int]):
    """``inner``'s order, dealt (``deal``) over ``ranks`` processes at ``batch`` examples each."""

    def __init__(self, inner: Sampler[int], batch: int, ranks: int) -> None:
        self.inner, self.batch, self.ranks = inner, batch, ranks

    def __len__(self) -> int:
        return len(self.inner) if isinstance(self.inner, Sized) else 0

    def __iter__(self) -> Iterator[int]:
        return iter(deal(list(self.inner), self.batch, self.ranks))


class PvbuildSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose training step computes the loss alone, and whose length-grouped batches are
    dealt evenly over data-parallel processes."""

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        inner = super()._get_train_sampler(train_dataset)
        if inner is None or self.args.world_size <= 1 or self.args.train_sampling_strategy != "group_by_length":
            return inner
        return DealtSampler(inner, self.args.per_device_train_batch_size, self.args.world_size)

    evaluates_eagerly = False  # set where the backbone was compiled (finetune.compile_backbone)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        if not self.evaluates_eagerly:
            return super().evaluate(*args, **kwargs)
        # Without gradients a compiled backbone would compile, and record CUDA graphs, all over again (about
        # two minutes on an H100 with an empty cache) for a few batches: evaluation runs it eagerly.
        with torch.compiler.set_stance("force_eager"):
            return super().evaluate(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if return_outputs or not model.training or self.aux_loss_enabled \
                or self.compute_loss_func is not None or self.label_smoother is not None \
                or getattr(self.args, "loss_type", "nll") != "nll":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # TRL's own loss for this case (its compute_loss, less the metrics): the mean negative
        # log-likelihood of the labelled tokens, over every process's count when the Trainer gives one.
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages the gradients over the processes
        return loss
