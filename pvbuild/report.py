"""The report step: a loss-curve PNG and a short HTML page about the run, in ``artifacts/<profile>/report/``.

It shows articles, pairs and tokens, the training and validation loss, and the endpoint's
answers to the ``ask.questions`` (so the report is also a smoke test of the deployed model).
"""

from __future__ import annotations

import html
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvbuild.ask import Asker
from pvbuild.outcomes import StageResult
from pvbuild.progress import say
from pvbuild.records import TEMP_SUFFIX, replace_directory

if TYPE_CHECKING:
    from pvbuild.pipeline import Pipeline


REPORT_SEED = 0


def plot_losses(history: Mapping[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = history.get("step_loss", [])
    epochs = history.get("epoch_validation_loss", [])
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.plot(range(1, len(steps) + 1), steps, label="training loss (per step)")
    if epochs and steps:
        per_epoch = len(steps) / len(epochs)
        axes.plot([per_epoch * (i + 1) for i in range(len(epochs))], epochs, "o-", label="validation loss (per epoch)")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def render(manifest: Mapping[str, Any], training: Mapping[str, Any], model: Mapping[str, Any],
           endpoint: Mapping[str, Any], answers: list[tuple[str, str]]) -> str:
    metrics = training.get("metrics") or {}
    facts = [("articles", manifest.get("articles")), ("question/answer pairs", manifest.get("pairs")),
             ("dataset format", manifest.get("format")), ("training tokens (all epochs)", metrics.get("train_tokens")),
             ("base model", training.get("base_model", {}).get("name")), ("training job", training.get("job_name")),
             ("final training loss", metrics.get("train_loss")),
             ("final validation loss", metrics.get("validation_loss")),
             ("model.tar.gz", f"{model.get('uri')} (sha256 {str(model.get('sha256'))[:12]})"),
             # No URL or pid: they change on every deploy, and the same inputs give the same report.
             ("endpoint", f"{endpoint.get('endpoint_name')} ({endpoint.get('backend')}, "
                          f"{endpoint.get('instance_type')})")]
    hyper = sorted((training.get("hyperparameters") or {}).items())
    qa = "\n".join(f"<dt>{html.escape(q)}</dt><dd>{html.escape(a) or '<i>(empty)</i>'}</dd>" for q, a in answers)
    return f"""<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>pvbuild report: {html.escape(str(training.get('job_name')))}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}th{{text-align:left;padding-right:1em}}
dd{{margin:0 0 1em 1em;white-space:pre-wrap}}</style></head><body>
<h1>pvbuild run report</h1>
<table>{_rows(facts)}</table>
<h2>Loss</h2><img src="loss.png" alt="training and validation loss">
<h2>Hyperparameters</h2><table>{_rows(hyper)}</table>
<h2>Sample questions</h2><dl>{qa}</dl>
</body></html>
"""


def run_report_stage(pipeline: Pipeline) -> StageResult:
    item = pipeline.items("report")[0]
    manifest = pipeline.read_artifact(pipeline.manifest) or {}
    training = pipeline.read_artifact(pipeline.training_record) or {}
    model = pipeline.read_artifact(pipeline.model_record) or {}
    endpoint = pipeline.read_artifact(pipeline.endpoint_record) or {}
    asker = Asker(pipeline)
    # Seeded: the same model gives the same answers, so the same inputs give the same report.
    answers = [(question, asker.ask(question, seed=REPORT_SEED)) for question in pipeline.config.ask["questions"]]
    target = pipeline.report_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".report-", suffix=TEMP_SUFFIX) as scratch:
        built = Path(scratch) / "report"
        built.mkdir()
        plot_losses(training.get("history") or {}, built / "loss.png")
        (built / "report.html").write_text(render(manifest, training, model, endpoint, answers), encoding="utf-8")
        replace_directory(built, target)
    with pipeline.finishing("report"):
        pipeline.record("report", item)
    say(f"report: {target.relative_to(pipeline.config.project_dir)}/report.html")
    return StageResult("report", built=1)
