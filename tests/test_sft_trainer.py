"""pvbuild's SFTTrainer: its training loss is TRL's without the per-step metrics (at host-found positions,
without the padding mask of right-padded batches), and length-grouped batches are dealt so that every
process gets batches of the same lengths."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler
from trl import SFTTrainer

from pvbuild.services.finetune import _dataset, lora_config, sft_config
from pvbuild.services.sft_data import Line, encode
from pvbuild.services.sft_trainer import (
    PvbuildSFTTrainer,
    deal,
    labelled_nll,
    labelled_positions,
    right_padded,
    without_right_padding_mask,
)
from tests.models import TEMPLATE, hyperparameters, instruction_lines


def test_dealt_batches_give_every_process_the_same_lengths() -> None:
    rng = random.Random(5)
    lengths = [rng.randrange(50, 900) for _ in range(240)]
    batch, ranks = 8, 2
    # As transformers' length-grouped sampler orders them: runs sorted longest first.
    grouped = [index for start in range(0, 240, 48)
               for index in sorted(range(start, start + 48), key=lambda i: -lengths[i])]

    def longest_per_rank(order: list[int]) -> list[list[int]]:
        """Each process's longest example per step, as accelerate hands batches to the processes."""
        shards = [list(BatchSamplerShard(BatchSampler(order, batch, drop_last=False), ranks, rank))
                  for rank in range(ranks)]
        return [[max(lengths[i] for i in step) for step in shard] for shard in shards]

    before, after = longest_per_rank(grouped), longest_per_rank(deal(grouped, batch, ranks))
    assert sorted(deal(grouped, batch, ranks)) == list(range(240))  # every example once
    assert all(first > second for first, second in zip(*before, strict=True))  # rank 0 always had the longer
    assert sum(first - second for first, second in zip(*after, strict=True)) \
        < sum(first - second for first, second in zip(*before, strict=True)) / 4
    assert deal(list(range(10)), 4, 2) == [0, 2, 4, 6, 1, 3, 5, 7, 8, 9]  # a short last run stays as it is


@pytest.fixture(scope="module")
def trainer(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> PvbuildSFTTrainer:
    return _new_trainer(tiny_base, tmp_path_factory.mktemp("trainer"))


def _new_trainer(base: Path, directory: Path, bf16: bool = False, loss_type: str = "nll",
                 **options: Any) -> PvbuildSFTTrainer:
    """A trainer of the tiny model on 16 instruction lines of four lengths, as ``finetune`` configures it on the
    CPU (``bf16``: under bf16 autocast, as on a GPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    lines = [{**line, "answer": line["answer"] + "先备案。" * (i % 4)} for i, line in enumerate(instruction_lines())]
    examples = encode(tokenizer, [Line(str(i), line) for i, line in enumerate(lines)], TEMPLATE, False, 256)
    config = replace(sft_config(hyperparameters(chat=False), directory, "cpu", 8, False), bf16=bf16,
                     loss_type=loss_type)
    return PvbuildSFTTrainer(model=AutoModelForCausalLM.from_pretrained(str(base)), args=config,
                             train_dataset=_dataset(examples), processing_class=tokenizer, **options)


def _batches(trainer: PvbuildSFTTrainer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Four training examples of different lengths as the trainer collates them, and as TRL's own collator (the
    innermost of the trainer's) does: with the padding mask, without the labelled positions."""
    assert trainer.train_dataset is not None
    examples = [trainer.train_dataset[index] for index in range(4)]
    assert len({len(example["input_ids"]) for example in examples}) > 1  # padded
    trls: Any = trainer.data_collator
    while hasattr(trls, "inner"):
        trls = trls.inner
    return trainer.data_collator(examples), trls(examples)


def test_the_training_loss_is_trls_without_its_metrics(trainer: PvbuildSFTTrainer) -> None:
    batch, trls_batch = _batches(trainer)
    assert "attention_mask" not in batch and int(trls_batch["attention_mask"].min()) == 0
    model = trainer.model
    assert model is not None
    model.train()
    ours = trainer.compute_loss(model, dict(batch))
    assert not trainer._metrics["train"]["entropy"]  # no gathers, no host syncs
    trls = SFTTrainer.compute_loss(trainer, model, dict(trls_batch))
    assert trainer._metrics["train"]["entropy"]
    assert torch.isfinite(ours) and torch.allclose(ours, trls)
    assert torch.allclose(trainer.compute_loss(model, dict(trls_batch)), trls)  # without positions: TRL's head
    labelled = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))  # the Trainer's count over every process
    assert torch.allclose(trainer.compute_loss(model, dict(batch), num_items_in_batch=labelled),
                          SFTTrainer.compute_loss(trainer, model, dict(trls_batch), num_items_in_batch=labelled))


def test_right_padded_batches_give_the_same_outputs_without_their_mask(trainer: PvbuildSFTTrainer) -> None:
    batch, trls_batch = _batches(trainer)
    model = trainer.model
    assert model is not None
    model.eval()
    with torch.no_grad():
        unmasked = model(input_ids=batch["input_ids"]).logits
        masked = model(input_ids=trls_batch["input_ids"], attention_mask=trls_batch["attention_mask"]).logits
    real = trls_batch["attention_mask"].bool()
    assert not real.all() and torch.allclose(unmasked[real], masked[real], atol=1e-5)


def test_only_right_padding_loses_its_mask() -> None:
    right, left = torch.tensor([[1, 1, 1], [1, 1, 0]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    assert right_padded(right) and not right_padded(left) and not right_padded(torch.tensor([[1, 0, 1]]))
    kept = without_right_padding_mask({"input_ids": torch.ones(2, 3), "attention_mask": left})
    assert torch.equal(kept["attention_mask"], left)


def test_trls_own_training_loss_keeps_the_padding_mask(tiny_base: Path,
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    """TRL's training loss for another ``loss_type`` counts a batch's tokens from its padding mask."""
    dft = _new_trainer(tiny_base, tmp_path_factory.mktemp("dft"), loss_type="dft")
    assert not dft.own_training_loss
    batch, _ = _batches(dft)
    model = dft.model
    assert model is not None
    model.train()
    assert torch.isfinite(dft.compute_loss(model, dict(batch)))  # without the mask, TRL raises a ValueError
    assert int(batch["attention_mask"].min()) == 0


def test_small_logits_give_the_chunked_kernels_loss_and_gradients() -> None:
    """Where a batch's labelled logits are small, one matrix product and a cross-entropy; else TRL's chunked
    log-probabilities: the same sums and gradients."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False)
    hidden, targets = torch.randn(12, 16, requires_grad=True), torch.randint(0, 300, (12,))
    sums, gradients = [], []
    for plain_up_to in (12 * 300, 0):
        total = labelled_nll(hidden, head, targets, plain_up_to)
        total.backward()
        assert hidden.grad is not None and head.weight.grad is not None
        sums.append(total.detach())
        gradients.append((hidden.grad.clone(), head.weight.grad.clone()))
        hidden.grad, head.weight.grad = None, None
    assert torch.allclose(sums[0], sums[1]) and sums[0] > 0
    assert all(torch.allclose(ours, chunked, atol=1e-6) for ours, chunked in zip(*gradients, strict=True))


def test_batches_say_where_their_labelled_tokens_are(trainer: PvbuildSFTTrainer) -> None:
    batch = next(iter(trainer.get_train_dataloader()))
    width = batch["input_ids"].shape[1]
    following = batch["labels"][:, 1:]
    assert len(batch["label_positions"]) == int((following != -100).sum()) > 0
    # Each position is the token before a labelled one, and each target that labelled token.
    rows, columns = batch["label_positions"] // width, batch["label_positions"] % width
    assert torch.equal(batch["label_targets"], batch["labels"][rows, columns + 1])
    assert torch.equal(batch["label_targets"], batch["input_ids"][rows, columns + 1])


def test_the_loss_at_host_found_positions_trains_lora_like_trls_head(
        tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    adapters = lora_config(hyperparameters(chat=False))
    lora = _new_trainer(tiny_base, tmp_path_factory.mktemp("lora"), peft_config=adapters)
    assert lora.scores_on_host_positions
    model = lora.model
    assert model is not None
    model.train()
    batch, trls_batch = _batches(lora)
    torch.manual_seed(0)  # the same LoRA dropout in both
    lora.compute_loss(model, dict(batch)).backward()
    our_gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters()
                     if parameter.grad is not None}
    model.zero_grad()
    torch.manual_seed(0)
    SFTTrainer.compute_loss(lora, model, dict(trls_batch)).backward()
    assert our_gradients and all(name.count("lora_") for name in our_gradients)  # the adapters alone
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert torch.allclose(our_gradients[name], parameter.grad, atol=1e-6), name


def test_the_loss_at_host_found_positions_computes_in_the_trainers_precision(
        tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Called part by part, the model would leave the bf16 autocast that accelerate wraps its forward in (a first
    try trained an H100 in fp32: six times the GPU's time a step)."""
    bf16 = _new_trainer(tiny_base, tmp_path_factory.mktemp("bf16"), bf16=True)
    model = bf16.model
    assert model is not None
    computed: list[torch.dtype] = []
    projection = next(module for name, module in model.named_modules() if name.endswith("q_proj"))
    projection.register_forward_hook(lambda module, args, output: computed.append(output.dtype))
    model.train()
    loss = bf16.compute_loss(model, dict(next(iter(bf16.get_train_dataloader()))))
    assert torch.isfinite(loss) and computed and set(computed) == {torch.bfloat16}


def test_padding_free_batches_score_no_token_across_two_examples() -> None:
    """Packed into one row (padding-free, with flash attention), an example's last token must not be scored on
    predicting the next example's first: TRL's collator labels that first token -100, and the positions follow."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]},
                {"input_ids": [9, 10, 11], "labels": [-100, 10, 11]}]
    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    found = labelled_positions(packed)
    assert found["label_positions"].tolist() == [1, 2, 4, 5]  # not 3, the first example's last token
    assert found["label_targets"].tolist() == [7, 8, 10, 11]
