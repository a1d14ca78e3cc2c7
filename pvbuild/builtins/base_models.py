"""Built-in base models on SageMaker JumpStart: Llama 3.2 1B/3B Instruct, and the Llama 3.1 family of
the Llama 3.1 fine-tuning guide (8B, 70B and 405B FP8, base and instruct), each with the guide's
training instance, sequence length, batch size and (Q)LoRA settings:

- 8B: ``ml.g5.12xlarge``, LoRA, 2,000 tokens, batch 4;
- 70B: ``ml.g5.48xlarge``, 8-bit QLoRA (``int8_quantization``), 2,000 tokens, batch 8;
- 405B FP8: ``ml.p5.48xlarge``, QLoRA over the FP8-quantised weights (LoRA adapters on a quantised
  base; no 8-bit flag, the weights already are 8-bit), 8,000 tokens, batch 8.

Instruct models fine-tune on chat data (JumpStart's ``dialog`` format), base models on instruction data.
The JumpStart versions are "*" (the hub's latest) except the reference model's; the hub document
resolved at run time gives the images and scripts (``services.sagemaker``)."""

from __future__ import annotations

from collections.abc import Callable

from pvbuild import BaseModel, hookimpl

__cache_version__ = "0.1.0"  # what this plugin's artifacts depend on: bump it when its output changes

_COMMON = {"epoch": 5, "learning_rate": 1e-4, "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.05,
           "per_device_train_batch_size": 4, "validation_split_ratio": 0.2, "max_input_length": 1024}
# The other hyperparameters JumpStart documents for its Llama fine-tuning (the SageMaker JumpStart
# Llama fine-tuning guide's list); pvbuild passes them through unchanged.
_JUMPSTART_LLAMA = ("instruction_tuned", "chat_dataset", "add_input_output_demarcation_key",
                    "per_device_eval_batch_size", "max_train_samples", "max_val_samples", "seed",
                    "train_data_split_seed", "preprocessing_num_workers", "int8_quantization", "enable_fsdp")


# Llama 3.1 by size: training and inference instance types, and the guide's hyperparameters.
_LLAMA_31: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, object]]] = {
    "8b": (("ml.g5.12xlarge", "ml.g5.24xlarge", "ml.g5.48xlarge"), ("ml.g5.2xlarge", "ml.g5.12xlarge"),
           {"max_input_length": 2000, "per_device_train_batch_size": 4}),
    "70b": (("ml.g5.48xlarge", "ml.p4d.24xlarge"), ("ml.g5.48xlarge", "ml.p4d.24xlarge"),
            {"max_input_length": 2000, "per_device_train_batch_size": 8, "int8_quantization": True}),
    "405b-fp8": (("ml.p5.48xlarge",), ("ml.p5.48xlarge",),
                 {"max_input_length": 8000, "per_device_train_batch_size": 8, "int8_quantization": False}),
}


def _llama_31(size: str, flavour: str) -> BaseModel:
    """``llama-3.1-70b-instruct`` and the like: instruct models on chat data, base models on instruction data."""
    training, inference, settings = _LLAMA_31[size]
    model, weights = size.removesuffix("-fp8"), "-fp8" if size.endswith("-fp8") else ""
    name = f"llama-3.1-{model}{flavour}{weights}"
    return BaseModel(
        name=name, jumpstart_model_id=f"meta-textgeneration-llama-3-1-{model}{flavour}{weights}",
        jumpstart_model_version="*", dataset_format="chat" if flavour else "instruction",
        hyperparameters={**_COMMON, **settings}, accepted_hyperparameters=_JUMPSTART_LLAMA,
        training_instance_types=training, inference_instance_types=inference,
        tokenizer=f"meta-llama/Llama-3.1-{model.upper()}{'-Instruct' if flavour else ''}{'-FP8' if weights else ''}",
        description=f"Llama 3.1 {model.upper()}{' Instruct' if flavour else ''}{' FP8' if weights else ''}: "
                    f"{training[0]}, {settings['max_input_length']} tokens, "
                    f"batch {settings['per_device_train_batch_size']}")


@hookimpl
def register_base_models(register: Callable[[BaseModel], None]) -> None:
    register(BaseModel(
        name="llama-3.2-1b-instruct", jumpstart_model_id="meta-textgeneration-llama-3-2-1b-instruct",
        jumpstart_model_version="1.2.5", dataset_format="instruction", hyperparameters=_COMMON,
        accepted_hyperparameters=_JUMPSTART_LLAMA,
        training_instance_types=("ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.12xlarge"),
        inference_instance_types=("ml.g5.xlarge", "ml.g5.2xlarge"),
        tokenizer="meta-llama/Llama-3.2-1B-Instruct", description="The reference model (default)"))
    register(BaseModel(
        name="llama-3.2-3b-instruct", jumpstart_model_id="meta-textgeneration-llama-3-2-3b-instruct",
        jumpstart_model_version="*", dataset_format="instruction", hyperparameters=_COMMON,
        accepted_hyperparameters=_JUMPSTART_LLAMA,
        training_instance_types=("ml.g5.2xlarge", "ml.g5.12xlarge"),
        inference_instance_types=("ml.g5.xlarge", "ml.g5.2xlarge"),
        tokenizer="meta-llama/Llama-3.2-3B-Instruct"))
    register(BaseModel(
        name="llama-3.1-8b-instruct", jumpstart_model_id="meta-textgeneration-llama-3-1-8b-instruct",
        jumpstart_model_version="*", dataset_format="chat",
        hyperparameters={**_COMMON, "max_input_length": 2000, "per_device_train_batch_size": 4},
        accepted_hyperparameters=_JUMPSTART_LLAMA,
        training_instance_types=("ml.g5.12xlarge", "ml.g5.24xlarge", "ml.g5.48xlarge"),
        inference_instance_types=("ml.g5.2xlarge", "ml.g5.12xlarge"),
        tokenizer="meta-llama/Llama-3.1-8B-Instruct", description="Chat fine-tuning uses the dialog format"))
    for size, flavour in [(size, flavour) for size in _LLAMA_31 for flavour in ("", "-instruct")]:
        if (size, flavour) != ("8b", "-instruct"):  # registered above, as pvbuild 0.1 did
            register(_llama_31(size, flavour))
