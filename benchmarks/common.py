"""Helpers shared by the benchmark scripts: the machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def timed_process(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` as a separate process; wall time and peak RSS of it and its children."""
    import resource

    start = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak_kb / 1024, 1)}


def generate_params(**changes):
    """The project's ``generate`` parameters (conf/base/parameters_generate.yml, from the project
    root) with ``changes``, validated: the decoder's settings."""
    import yaml

    from tangshi_pipeline.poet.params import GenerateParams

    shipped = yaml.safe_load(Path("conf/base/parameters_generate.yml").read_text("utf-8"))["generate"]
    return GenerateParams.model_validate({**shipped, **changes})


def generation_inputs(model: Path | None = None, project: Path = Path(".")):
    """What the generation benchmarks decode with, from ``project``'s data/ (default: the current
    folder, the project root): (vocab, vectors, prosody, model artifact — ``model``, a version
    folder, or the latest; its ``version`` says which). Stops with a message when there is no
    model or it was not trained on this vocabulary."""
    import pandas as pd
    from kedro.io import Version

    from tangshi_pipeline.plumbing.datasets import ModelArtifact
    from tangshi_pipeline.poet.artifact import load_artifact
    from tangshi_pipeline.poet.prosody import Prosody
    from tangshi_pipeline.poet.vocab import Vocab

    data = project / "data/05_model_input"
    read = lambda name: json.loads((data / name).read_text("utf-8"))  # noqa: E731
    vocab = Vocab.from_json(read("vocab.json"))
    prosody = Prosody.from_json(read("tone_lexicon.json"), read("rhyme_table.json"))
    models = ModelArtifact(str(project / "data/06_models/poet"), Version(None, None))
    if model is None and not models.exists():
        raise SystemExit(f"no trained model in {project / 'data/06_models/poet'}: run `kedro run` first")
    artifact = load_artifact(model) if model else models.load()
    if artifact.vocab_fingerprint != vocab.fingerprint:
        raise SystemExit(f"the model was not trained on {data / 'vocab.json'}: run "
                         "`kedro run --pipelines=training`, or pass --model")
    return vocab, pd.read_parquet(data / "vectors.parquet"), prosody, artifact


def write_results(name: str, results: dict, table: list[tuple[str, str]] | None = None) -> Path:
    """benchmarks/results/<name>.json (+ .md when a table of (figure, value) rows is given)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **results}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", "utf-8")
    if table:
        rows = "\n".join(f"| {k} | {v} |" for k, v in table)
        m = payload["machine"]
        (RESULTS / f"{name}.md").write_text(
            f"# {name}\n\nMachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}"
            f"{', ' + m['gpu'] if 'gpu' in m else ''} — {payload['when']}\n\n| figure | value |\n|---|---|\n{rows}\n",
            "utf-8")
    return path
