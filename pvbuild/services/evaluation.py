"""Evaluation of a model on held-out lines: greedy answers to their prompts, scored against the
reference answers with chrF (character n-gram F-score, sacrebleu's ``CHRF``), which needs no word
segmentation and so suits Chinese text.

The prompts are built exactly as the trainer builds them (``sft_data``): the instruction template's
prompt after the tokenizer's BOS, or the dialog up to its last assistant turn through the chat
template. Greedy decoding on one CPU thread: the same model gives the same answers, so an
evaluation is an artifact like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvbuild.services.sft_data import Line


@dataclass(frozen=True)
class Question:
    """One held-out line as a question: what is shown, the prompt given to the model, the reference."""

    where: str  # train-00000-of-00001.jsonl:17
    question: str
    prompt: str
    reference: str


def questions_of(lines: Sequence[Line], template: Mapping[str, str] | None, chat: bool, count: int) -> list[Question]:
    """The first ``count`` lines as questions (instruction lines need the template)."""
    found = []
    for line in lines[:count]:
        if chat:
            dialog = list(line.values.get("dialog") or [])
            last = max((i for i, m in enumerate(dialog) if m.get("role") == "assistant"), default=None)
            if last is None:
                continue
            asked = next((m["content"] for m in reversed(dialog[:last]) if m.get("role") == "user"), "")
            found.append(Question(line.where, asked, "", dialog[last]["content"]))
        elif template is not None:
            values = dict(line.values)
            found.append(Question(line.where, str(values.get("question", "")), template["prompt"].format(**values),
                                  template["completion"].format(**values)))
    return found


def _prompt_ids(tokenizer: Any, question: Question, dialog: Sequence[Mapping[str, str]] | None) -> list[int]:
    if dialog is not None:
        text = tokenizer.apply_chat_template(list(dialog), tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return head + list(tokenizer(question.prompt, add_special_tokens=False)["input_ids"])


def answer(model_dir: Path | str, questions: Sequence[Question], dialogs: Sequence[Sequence[Mapping[str, str]]] | None,
           max_new_tokens: int) -> list[str]:
    """The model's greedy answer to each question (``dialogs``: for chat data, each dialog before its
    last assistant turn)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pvbuild.services.finetune import quiet_transformers

    quiet_transformers()
    torch.set_num_threads(1)  # determinism, and small models are faster so on two cores (finetune.use_cpu_threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    answers = []
    with torch.no_grad():
        for index, question in enumerate(questions):
            ids = _prompt_ids(tokenizer, question, dialogs[index] if dialogs is not None else None)
            output = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            answers.append(str(tokenizer.decode(output[0][len(ids):], skip_special_tokens=True)).strip())
    return answers


def chrf(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    """Each answer's chrF against its reference, from 0 to 100."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    return [round(metric.sentence_score(found, [wanted]).score, 2) for found, wanted in zip(answers, references,
                                                                                             strict=True)]
