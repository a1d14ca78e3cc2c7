"""Data-parallel training in several processes, one per GPU, through accelerate's launcher.

``launch`` writes the job's ``LaunchSpec`` to a file and runs ``accelerate launch --num_processes N
-m pvbuild.services.launch SPEC``; every process runs ``finetune`` on its share of each batch
(accelerate and the Trainer set up torch.distributed from the launcher's environment), and the
first process alone saves the model and writes the result, so N processes leave exactly one model
and one result, as one process does. The per-device batch is JumpStart's
``per_device_train_batch_size``; the global batch is N times it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pvbuild.errors import PvbuildError
from pvbuild.files import atomic_write_text
from pvbuild.services.finetune import FinetuneResult, finetune


class LaunchError(PvbuildError):
    """A process of a multi-process training run failed."""


@dataclass(frozen=True)
class LaunchSpec:
    """What each process trains: ``finetune``'s arguments, and where the first process writes the result."""

    model_source: str
    train_dir: str
    validation_dir: str | None
    hyperparameters: dict[str, str]
    output_dir: str
    lora: bool
    device: str
    long_prompts: str
    result_file: str
    compile_setting: str = "auto"  # training.compile


def processes_for(requested: Any, device: str) -> int:
    """``training.gpus``: ``"auto"`` is every visible GPU (one process on the CPU); a number is that many
    processes (on the CPU too, which is how the launch path is tested without a GPU)."""
    if str(requested) != "auto":
        return max(1, int(requested))
    if device == "cpu":
        return 1
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def launch(spec: LaunchSpec, processes: int, log: Path) -> FinetuneResult:
    """Run ``spec`` in ``processes`` processes; the launcher's output goes to ``log``."""
    spec_file = Path(spec.result_file).with_suffix(".spec.json")
    atomic_write_text(spec_file, json.dumps(asdict(spec)))
    # accelerate's multi-GPU launcher (torchrun underneath) also starts CPU processes, which then talk
    # over gloo; its --cpu launcher needs mpirun for more than one. Precision is the trainer's (SFTConfig).
    several = ["--multi_gpu"] if processes > 1 else []  # accelerate refuses it for one process
    command = [sys.executable, "-m", "accelerate.commands.launch", *several, "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "pvbuild.services.launch", str(spec_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if spec.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")  # one thread a process: the processes are the parallelism
    returncode = _run(command, env, log)
    result_file = Path(spec.result_file)
    if returncode != 0 or not result_file.is_file():
        raise LaunchError(f"training in {processes} processes failed (exit {returncode}): "
                          f"{_first_error(log)}; the processes' output is in {log}")
    return FinetuneResult(**json.loads(result_file.read_text(encoding="utf-8")))


def _first_error(log: Path) -> str:
    """The exception a process died of (``OSError: ...``), not the launcher's summary of the exit."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    errors = [line.strip() for line in lines if re.match(r"\s*(\[rank\d+\]:\s*)?[A-Za-z_.]*(Error|Exception|Interrupt)"
                                                        r"\b.*:", line)]
    return re.sub(r"^\[rank\d+\]:\s*", "", errors[0]) if errors else "no exception in its output"


def _run(command: list[str], env: dict[str, str], log: Path) -> int:
    """Run the launcher: every line of its output into ``log``, the progress lines to stderr too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                    env=env) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                output.write(line)
                if line.startswith(b"train: "):
                    sys.stderr.write(line.decode("utf-8", errors="replace"))
                    sys.stderr.flush()
        finally:  # interrupted (Ctrl-C reaches the launcher too): give it a moment, then end it
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return process.returncode


def main(argv: list[str]) -> int:
    """One process of a launched run (``accelerate launch ... -m pvbuild.services.launch SPEC``)."""
    spec = LaunchSpec(**json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    first = int(os.environ.get("RANK", "0")) == 0
    result = finetune(spec.model_source, Path(spec.train_dir), Path(spec.validation_dir) if spec.validation_dir
                      else None, spec.hyperparameters, Path(spec.output_dir), spec.lora, spec.device,
                      spec.long_prompts, spec.compile_setting)
    if first:
        atomic_write_text(Path(spec.result_file), json.dumps(asdict(result)))
    import torch.distributed

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # as torch asks: a clean exit of every process
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
