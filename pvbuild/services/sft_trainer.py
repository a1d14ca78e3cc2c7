"""TRL's ``SFTTrainer`` with less per-step bookkeeping, and batches dealt evenly over GPUs.

Five changes, each kept by measurement (README, "Several GPUs", session 11; "The local trainer"):

- **The training loss without TRL's per-step metrics.** TRL computes its loss from its fused LM
  head (as here), then, every step, entropy, token accuracy and a token count: four all-gathers and
  three host syncs (``.item()``) a step. A sync stops the host queuing work ahead of the GPU, and
  with several processes each one also waits for the other process's all-reduce. pvbuild records
  neither metric, so the training step skips them; evaluation is TRL's, unchanged.
- **Labelled tokens found on the host.** TRL's fused head selects the labelled positions with a
  boolean mask of the GPU's labels: the host waits for the GPU in the middle of every step. The
  collator knows those positions already (its labels are on the host), so ``with_labelled_positions``
  adds them to each batch, and on one process the loss scores the backbone's output at them with
  TRL's own chunked log-probability kernel (or, where the labelled tokens' logits are small, one
  matrix product and a cross-entropy, a few kernels where TRL's tiles launch dozens): the same loss,
  without the wait.
- **No padding mask for right-padded batches.** TRL's collator pads on the right, and in a causal
  model no real token attends to a later position: its output is the same with the mask and without
  it, and the padding's outputs are never scored. Without a mask the model builds none and attends
  causally with grouped keys and values, not repeated ones (``without_right_padding_mask``): a compiled
  forward took 4 % less GPU time; the attention kernels themselves cost the same. Where TRL's own
  training loss runs (another ``loss_type``, an auxiliary loss), the mask stays: TRL counts tokens by it.
- **Length-grouped batches dealt evenly over the processes.** transformers' length-grouped sampler
  sorts each megabatch by length and the launcher hands consecutive batches to the processes in
  turn, so process 0 always got the longest of each pair (4-8 % more padded tokens a step, and the
  others waited for it at every all-reduce). ``deal`` hands the examples of each step's batches out
  round-robin instead: every process gets batches of the same lengths.
- **Evaluation without compiling.** Where the backbone runs compiled (``training.compile``), evaluation
  runs it eagerly: without gradients it would be compiled, and its graphs recorded, a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from typing import Any

import torch
from torch.utils.data import Sampler
from trl import SFTTrainer

from pvbuild.services.sft_data import IGNORE

# What TRL's fused head does beyond ``hidden @ head.T`` for some models (soft-capped or scaled logits): such
# models keep TRL's head.
SCALED_HEAD_SETTINGS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                        "logits_scaling")
VOCABULARY_CHUNK = 32768  # TRL's own vocabulary tile for its chunked log-probabilities
# Up to this many logits (labelled tokens x vocabulary) the loss takes one matrix product and a cross-entropy:
# at most about 0.7 GB (bf16 logits, their fp32 copy and log-softmax), against the chunked kernel's many
# launches a step.
PLAIN_HEAD_LOGITS = 2**26


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


def labelled_positions(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Where ``batch``'s labelled tokens are, as rows of its flattened ``[batch x length]`` positions (the
    position before each labelled token, which predicts it), and those tokens; from ``shift_labels`` where the
    collator gives them, else from ``labels`` shifted by one."""
    labels = batch["labels"]
    following = batch["shift_labels"] if "shift_labels" in batch else labels[:, 1:]
    rows, columns = (following != IGNORE).nonzero(as_tuple=True)
    return {"label_positions": rows * labels.shape[-1] + columns, "label_targets": following[rows, columns]}


def right_padded(mask: torch.Tensor) -> bool:
    """Whether each row of the ``[batch x length]`` padding ``mask`` is its tokens, then only padding."""
    return bool((mask.cummin(dim=-1).values == mask).all()) if mask.dim() == 2 else False


def without_right_padding_mask(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` without its padding mask where the padding is on the right of every row: the model then attends
    causally alone."""
    if "attention_mask" in batch and right_padded(batch["attention_mask"]):
        return {name: value for name, value in batch.items() if name != "attention_mask"}
    return dict(batch)


def with_labelled_positions(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` and its ``labelled_positions``."""
    return {**batch, **labelled_positions(batch)}


class CollatedOnHost:
    """``inner``'s batches, changed by each of ``changes`` in turn where the batch is collated (on the host, in the
    data loader's workers)."""

    def __init__(self, inner: Callable[[list[Any]], Mapping[str, torch.Tensor]],
                 changes: Sequence[Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]]) -> None:
        self.inner, self.changes = inner, changes

    def __call__(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        batch = dict(self.inner(examples))
        for change in self.changes:
            batch = change(batch)
        return batch


def causal_model(model: Any) -> Any:
    """The transformers model inside ``model``: itself, or the model a peft wrapper holds (LoRA's adapters are
    in its layers)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class PvbuildSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose training step computes the loss alone (with one process, at labelled positions found
    on the host), and whose length-grouped batches are dealt evenly over data-parallel processes."""

    finds_labels_on_host = True  # False: TRL's fused head finds them on the GPU (bench_train.py --trls-head)
    drops_padding_mask = True  # False: right-padded batches keep their mask (bench_train.py --padding-mask)
    backbone_compiled = False  # set where the backbone was compiled (finetune.compile_backbone)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model: Any = self.model
        config = model.config.get_text_config() if model is not None else None
        # One process: a wrapper (DDP) must see the whole forward to reduce the gradients.
        self.scores_on_host_positions = self.finds_labels_on_host and self.args.world_size == 1 \
            and config is not None and not any(getattr(config, setting, None) is not None
                                               for setting in SCALED_HEAD_SETTINGS)
        # TRL's own training loss (an auxiliary loss, label smoothing, another loss_type) counts the tokens of a
        # batch from its padding mask: such a trainer keeps the mask.
        self.own_training_loss = not (self.aux_loss_enabled or self.compute_loss_func is not None
                                      or self.label_smoother is not None
                                      or getattr(self.args, "loss_type", "nll") != "nll")
        changes = [without_right_padding_mask] if self.drops_padding_mask and self.own_training_loss else []
        if self.scores_on_host_positions:  # else nothing reads the positions
            changes.append(with_labelled_positions)
        if changes:
            self.data_collator = CollatedOnHost(self.data_collator, changes)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        inner = super()._get_train_sampler(train_dataset)
        if inner is None or self.args.world_size <= 1 or self.args.train_sampling_strategy != "group_by_length":
            return inner
        return DealtSampler(inner, self.args.per_device_train_batch_size, self.args.world_size)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        if not self.backbone_compiled:
            return super().evaluate(*args, **kwargs)
        # Without gradients a compiled backbone would compile, and record CUDA graphs, all over again (about
        # two minutes on an H100 with an empty cache) for a few batches: evaluation runs it eagerly.
        with torch.compiler.set_stance("force_eager"):
            return super().evaluate(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        positions, targets = inputs.pop("label_positions", None), inputs.pop("label_targets", None)
        if return_outputs or not model.training or not self.own_training_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if positions is not None and targets is not None and self.scores_on_host_positions:
            return self._loss_at(model, inputs, positions, targets, num_items_in_batch)
        # TRL's own loss for this case (its compute_loss, less the metrics): the mean negative
        # log-likelihood of the labelled tokens, over every process's count when the Trainer gives one.
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages the gradients over the processes
        return loss

    def _loss_at(self, model: Any, inputs: Mapping[str, Any], positions: torch.Tensor, targets: torch.Tensor,
                 num_items_in_batch: Any) -> torch.Tensor:
        """TRL's loss (its fused head's, over the Trainer's count where it gives one) at the labelled
        ``positions`` found on the host: the backbone, then the negative log-likelihood of ``targets``."""
        causal = causal_model(model)
        backbone_inputs = {name: value for name, value in inputs.items() if name not in ("labels", "shift_labels")}
        if self.backbone_compiled:
            # Lengths vary from batch to batch: compiled for any length the first time, not once for the first
            # length and again for the rest (each compile took 80-130 s on an H100 with an empty cache).
            for name in ("input_ids", "attention_mask", "position_ids"):
                if name in backbone_inputs:
                    torch._dynamo.maybe_mark_dynamic(backbone_inputs[name], 1)
        # The model's own forward runs under bf16 autocast (accelerate wraps it); its parts, called here, would not.
        with self.accelerator.autocast():
            hidden = causal.base_model(**backbone_inputs, use_cache=False).last_hidden_state
            total = labelled_nll(hidden.flatten(0, 1).index_select(0, positions), causal.get_output_embeddings(),
                                 targets)
        count = num_items_in_batch if num_items_in_batch is not None else max(1, len(targets))  # no host sync
        return total / count


def labelled_nll(hidden: torch.Tensor, head: Any, targets: torch.Tensor,
                 plain_up_to: int = PLAIN_HEAD_LOGITS) -> torch.Tensor:
    """The summed negative log-likelihood of ``targets`` under the logits of ``hidden`` by the linear ``head`` (one
    row a target): one matrix product and a cross-entropy where there are at most ``plain_up_to`` logits, else
    TRL's chunked log-probabilities, which never hold them all."""
    from trl.kernels import ChunkedLogProbFunction

    weight: torch.Tensor = head.weight
    bias: torch.Tensor | None = getattr(head, "bias", None)
    if len(targets) * weight.shape[0] <= plain_up_to:
        logits = torch.nn.functional.linear(hidden, weight, bias)
        return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    return -ChunkedLogProbFunction.apply(hidden, weight, bias, targets, 1.0, VOCABULARY_CHUNK, None, 1.0,
                                         ("log_probs",))[0].sum()
