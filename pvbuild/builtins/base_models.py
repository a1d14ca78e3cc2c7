"""Built-in base models: Llama 3.2 1B/3B Instruct and Llama 3.1 8B Instruct on SageMaker JumpStart."""

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
