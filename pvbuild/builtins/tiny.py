"""The ``tiny`` base model: a two-layer Llama built on the spot, for offline runs and tests.

Its byte-level BPE tokenizer is trained on the dataset's own text and carries the Llama 3
special tokens and chat template, so prompts, stop tokens and ``ask`` behave as with the real
Llama 3.2 Instruct models. Weights start from a fixed seed: the same dataset gives the same model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pvbuild import BaseModel, hookimpl
from pvbuild.services.finetune import LOCAL_HYPERPARAMETERS

__cache_version__ = "0.1.0"  # what this plugin's artifacts depend on: bump it when its output changes

LLAMA3_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                         "<|eot_id|>"]
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
VOCABULARY_SIZE = 1024
TINY_HYPERPARAMETERS = {"epoch": 10, "learning_rate": 4e-3, "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.05,
                        "per_device_train_batch_size": 8, "validation_split_ratio": 0.2, "max_input_length": 256,
                        "seed": 42}


def build_tiny_model(texts: Sequence[str], directory: Path, seed: int) -> None:
    """Train the tokenizer on ``texts`` and save a freshly initialised tiny Llama in ``directory``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from pvbuild.services.finetune import quiet_transformers

    quiet_transformers()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=VOCABULARY_SIZE, special_tokens=LLAMA3_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>",
        chat_template=LLAMA3_CHAT_TEMPLATE, model_max_length=512)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=172, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@hookimpl
def register_base_models(register: Callable[[BaseModel], None]) -> None:
    register(BaseModel(
        name="tiny", jumpstart_model_id="", jumpstart_model_version="", dataset_format="instruction",
        hyperparameters=TINY_HYPERPARAMETERS, training_instance_types=(), inference_instance_types=(),
        tokenizer="", build_local=build_tiny_model, accepted_hyperparameters=LOCAL_HYPERPARAMETERS,
        description="A two-layer Llama built from the dataset's text (offline runs and tests; local backends only)"))
