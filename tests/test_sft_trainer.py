"""pvbuild's SFTTrainer: its training loss is TRL's without the per-step metrics, and length-grouped
batches are dealt so that every process gets batches of the same lengths."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler
from trl import SFTTrainer

from pvbuild.services.finetune import _dataset, sft_config
from pvbuild.services.sft_data import Line, encode
from pvbuild.services.sft_trainer import PvbuildSFTTrainer, deal
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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base))
    lines = [Line(str(i), line) for i, line in enumerate(instruction_lines())]
    examples = encode(tokenizer, lines, TEMPLATE, False, 256)
    config = sft_config(hyperparameters(chat=False), tmp_path_factory.mktemp("trainer"), "cpu", 8, False)
    return PvbuildSFTTrainer(model=AutoModelForCausalLM.from_pretrained(str(tiny_base)), args=config,
                             train_dataset=_dataset(examples), processing_class=tokenizer)


def test_the_training_loss_is_trls_without_its_metrics(trainer: PvbuildSFTTrainer) -> None:
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    assert model is not None
    model.train()
    ours = trainer.compute_loss(model, dict(batch))
    assert not trainer._metrics["train"]["entropy"]  # no gathers, no host syncs
    trls = SFTTrainer.compute_loss(trainer, model, dict(batch))
    assert trainer._metrics["train"]["entropy"]
    assert torch.isfinite(ours) and torch.allclose(ours, trls)
    labelled = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))  # the Trainer's count over every process
    assert torch.allclose(trainer.compute_loss(model, dict(batch), num_items_in_batch=labelled),
                          SFTTrainer.compute_loss(trainer, model, dict(batch), num_items_in_batch=labelled))
