"""Asking the deployed endpoint (``pvbuild ask`` and the report): a question → the base model's chat
template → the SageMaker LLM payload → the endpoint.

The prompt is built on this side, as for a JumpStart endpoint: the tokenizer (``ask.tokenizer``,
else the base model's, else, for a model built locally, the one packed with it) renders the
system prompt and the question with ``add_generation_prompt=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pvbuild.errors import PvbuildError
from pvbuild.services.endpoints import EndpointError
from pvbuild.stages.deploy import live_endpoint

if TYPE_CHECKING:
    from pvbuild.engine.workspace import Workspace

GENERATION_KEYS = ("max_new_tokens", "top_p", "temperature", "repetition_penalty", "stop")


def tokenizer_source(workspace: Workspace, record: Mapping[str, Any]) -> str:
    source = str(workspace.config.ask["tokenizer"] or workspace.base_model().tokenizer)
    if not source and record.get("backend") == "local":
        from pvbuild.services.serve import unpacked_dir  # http.server and ssl: only when asked

        source = str(unpacked_dir(workspace.config.cache_dir / "serve", str(record["model_sha256"])))
    if not source:
        raise PvbuildError(f"{workspace.config.config_file}: ask.tokenizer: base model "
                           f"{workspace.base_model().name!r} names no tokenizer; set a local directory or hub id")
    return source


def load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    from pvbuild.services.finetune import quiet_transformers

    quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise PvbuildError(f"cannot load the tokenizer from {source!r} ({error}); set ask.tokenizer to a local "
                           "directory holding tokenizer.json and the chat template") from error


def build_payload(tokenizer: Any, question: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The SPEC payload: the chat-templated prompt and the generation parameters."""
    messages = [{"role": "system", "content": options["system_prompt"]}] if options["system_prompt"] else []
    messages.append({"role": "user", "content": question})
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return {"inputs": prompt, "parameters": {key: options[key] for key in GENERATION_KEYS}}


def answer_text(reply: Any) -> str:
    """The ``generated_text`` of a ``[{...}]`` or ``{...}`` reply."""
    first = reply[0] if isinstance(reply, list) and reply else reply
    if not isinstance(first, dict) or not isinstance(first.get("generated_text"), str):
        raise EndpointError(f"the endpoint's reply has no generated_text: {str(reply)[:300]}")
    return first["generated_text"]


class Asker:
    """Asks the deployed endpoint; loads the tokenizer once for many questions."""

    def __init__(self, workspace: Workspace, overrides: Mapping[str, Any] | None = None) -> None:
        self.backend, self.record = live_endpoint(workspace)
        self.options = {**workspace.config.ask, **(overrides or {})}
        self.tokenizer = load_tokenizer(tokenizer_source(workspace, self.record))

    def ask(self, question: str, seed: int | None = None) -> str:
        """The endpoint's answer; with a ``seed``, sampling is repeatable (the payload carries it, as TGI's does)."""
        payload = build_payload(self.tokenizer, question, self.options)
        if seed is not None:
            payload["parameters"]["seed"] = seed
        return answer_text(self.backend.invoke(self.record, payload)).strip()
