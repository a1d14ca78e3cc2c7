"""Batch annotation at scale: N articles annotated by ``doit data`` in batch mode against the local fake
of OpenAI's Files and Batches endpoints, beside live mode (one call per article, the production
concurrency, ``latency`` seconds a call) on the same tree in the same run.

Prints, per mode: the wall time of ``doit data``, the HTTP calls the server saw against the number of
articles, and how many conversations were written. The fake runs a batch at once (a real one takes
minutes to hours), so the batch figure is pvbuild's own cost: building and uploading the input files,
polling, and applying the results.

Run: python bench/bench_batch.py [N] [--latency S] [--poll S]   (default: 10000 articles, 0.3 s, 1 s)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_scale import ENV, ROOT, synthesize  # noqa: E402
from pvbuild.config import load_config  # noqa: E402
from tests.fake_batches import FakeBatchOpenAI  # noqa: E402

PRODUCTION_CONCURRENCY = int(load_config(ROOT, "production").annotator.options["concurrency"])


def annotate(count: int, mode: str, latency: float, poll: float) -> None:
    with tempfile.TemporaryDirectory(prefix="pvbuild-batch-") as tmp, FakeBatchOpenAI(latency=latency) as fake:
        project = Path(tmp)
        synthesize(project, count)
        (project / "pvbuild.toml").write_text(
            f'[profile.default.annotator]\nplugin = "openai"\nbase_url = "{fake.url}/v1"\nmode = "{mode}"\n'
            f"batch_poll_seconds = {poll}\nconcurrency = {PRODUCTION_CONCURRENCY}\n", encoding="utf-8")
        env = ENV | {"OPENAI_API_KEY": "sk-bench"}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "doit", "data"], cwd=project, env=env, capture_output=True,
                              text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"doit data failed ({mode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        calls = sum(fake.requests.values()) + len(fake.calls)
        written = len(list((project / "artifacts" / "default" / "conversations").glob("*.csv")))
        detail = ", ".join(f"{number} {kind}" for kind, number in sorted(fake.requests.items())) or "chat completions"
        print(f"{mode:5} {count} articles: {seconds:7.1f} s, {calls} HTTP calls ({calls / count:.4f} per article: "
              f"{detail}), {written} conversations written", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds a live call takes")
    parser.add_argument("--poll", type=float, default=1.0, help="batch_poll_seconds")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    annotate(args.count, "batch", args.latency, args.poll)
    annotate(args.count, "live", args.latency, args.poll)


if __name__ == "__main__":
    main()
