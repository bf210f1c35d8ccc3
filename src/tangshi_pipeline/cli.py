"""Project commands: Kedro's ``run`` with ``--force``, ``kedro models`` and ``kedro serve``.

``kedro run`` is Kedro's own command (every option kept) plus ``--force``: run every node whatever
the stage cache says, and refresh its records (the same as ``TANGSHI_FORCE_RUN=1``). Caching
itself is in :mod:`tangshi_pipeline.plumbing.cache` (``SESSION_CLASS``), so it also applies to runs
started from Python through ``settings.SESSION_CLASS`` (a plain ``KedroSession`` says it runs without it). A run that fails (a bad parameter, a bad input file, an unknown node name)
ends with its one-line message and exit code 1; the traceback only with ``--verbose``.

``kedro models`` lists the saved versions of the ``model`` dataset, newest first, with the metrics
stored in each version's ``config.json`` and a status: ok, ok but unverified (saved before weight
hashes were recorded), or broken and why (every load check is run); pin one for generation with
``kedro run --pipelines=generate --load-versions=model:<version>``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.cli.utils import env_option
from kedro.framework.project import settings
from kedro.framework.startup import bootstrap_project
from kedro.io import DatasetError

from tangshi_pipeline.plumbing.cache import FORCE_ENV
from tangshi_pipeline.plumbing.model_versions import model_versions


@click.group(name="tangshi-pipeline")
def cli() -> None:
    """Project commands."""


def _run(force: bool, verbose: bool, **kwargs: Any) -> Any:
    try:
        return _run_forced(**kwargs) if force else kedro_run.callback(**kwargs)
    except click.ClickException:
        raise  # Kedro's own CLI errors, already one line
    except Exception as exc:
        if verbose:
            raise
        raise click.ClickException(
            f"{type(exc).__name__}: {exc}\n(run with --verbose for the traceback)") from exc


def _run_forced(**kwargs: Any) -> Any:
    previous = os.environ.get(FORCE_ENV)
    os.environ[FORCE_ENV] = "1"
    try:
        return kedro_run.callback(**kwargs)
    finally:
        if previous is None:
            os.environ.pop(FORCE_ENV, None)
        else:
            os.environ[FORCE_ENV] = previous


run = click.Command(
    name="run",
    callback=_run,
    params=[
        *kedro_run.params,
        click.Option(["--force"], is_flag=True, help="Run every node, ignoring the stage cache (refreshes "
                     f"its records); same as {FORCE_ENV}=1."),
        click.Option(["--verbose", "-v"], is_flag=True,
                     help="On an error, show its traceback, not only its one-line message."),
    ],
    help=(kedro_run.help or "Run the pipeline.") + " Up-to-date nodes are skipped (stage cache); "
         "--force runs them all.",
)
cli.add_command(run)


def _status(row: dict[str, Any]) -> str:
    if row["error"]:
        return f"broken: {row['error']}"
    return "ok" if row["verified"] else "ok, unverified (no sha256 recorded)"


def _flat(metrics: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@cli.command(name="models")
@env_option
@click.option("--dataset", default="model", show_default=True, help="The versioned model dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(env: str | None, dataset: str, as_json: bool) -> None:
    """List the saved model versions (newest first) with their metrics."""
    from rich.console import Console
    from rich.table import Table

    project = Path.cwd()
    bootstrap_project(project)
    if as_json:  # machine-readable output: Kedro's INFO lines (on stdout) would break a JSON parser
        logging.disable(logging.INFO)
    try:
        with settings.SESSION_CLASS.create(project_path=project, env=env) as session:
            try:
                rows = model_versions(session.load_context().catalog, dataset)
            except DatasetError as exc:
                raise click.ClickException(str(exc)) from None
    finally:
        logging.disable(logging.NOTSET)
    if as_json:
        click.echo(json.dumps(rows, indent=1, ensure_ascii=False))
        return
    if not rows:
        click.echo(f"no saved versions of {dataset!r} yet: run `kedro run --pipelines=training`.")
        return
    flat = [_flat(r["metrics"]) for r in rows]
    columns = sorted({k for f in flat for k in f})
    table = Table(title=f"{dataset}: {len(rows)} version(s), newest first (the default for generation)")
    table.add_column("version", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("vocab")
    table.add_column("status")
    for row, metrics in zip(rows, flat):
        cells = [f"{metrics[c]:.4g}" if isinstance(metrics.get(c), float) else str(metrics.get(c, ""))
                 for c in columns]
        table.add_row(row["version"], *cells, str(row["vocab_fingerprint"] or "")[:12], _status(row))
    Console().print(table)
    if rows[0]["error"]:
        good = next((r["version"] for r in rows if not r["error"]), None)
        click.echo(f"The newest version {rows[0]['version']} is broken: generation stops until you retrain"
                   + (f" or pin {good}." if good else "."))
    click.echo("Pin one for generation: kedro run --pipelines=generate --load-versions=model:<version>")


@cli.command(name="serve")
@env_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The studio has no authentication: keep it on this machine.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--model-version", default=None, help="A model version (`kedro models`); default: the newest.")
@click.option("--window-ms", default=5.0, show_default=True, type=click.FloatRange(0, 1000),
              help="How long the first waiting request waits for others to decode with it.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0),
              help="torch CPU threads for decoding; 0 = torch's default.")
def serve(env: str | None, host: str, port: int, model_version: str | None, window_ms: float, threads: int) -> None:
    """The poem studio: a page and a JSON API (OpenAPI at /docs) on http://HOST:PORT/."""
    import logging

    import torch
    import uvicorn

    from tangshi_pipeline.studio.app import create_app
    from tangshi_pipeline.studio.batching import decoder_thread
    from tangshi_pipeline.studio.load import StudioError, load_poet

    log = logging.getLogger("tangshi_pipeline.studio")
    _check_port(host, port)  # before the model is loaded: a busy port fails at once
    pool = decoder_thread()  # loads the model and decodes: torch runs on this one thread only
    if threads:
        pool.submit(torch.set_num_threads, threads).result()
    try:
        poet, models = pool.submit(load_poet, Path.cwd(), env, model_version).result()
    except StudioError as exc:
        pool.shutdown()
        raise click.ClickException(str(exc)) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the studio has no authentication; anyone who reaches this port can use it", host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    log.info("Poem studio: %s (model %s, %d training lines, OpenAPI at %sdocs)", url, poet.version,
             len(poet.sources), url)
    uvicorn.run(create_app(poet, models, window=window_ms / 1000, pool=pool), host=host, port=port, log_config=None,
                log_level="info", access_log=False)


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise click.ClickException(f"--host {host}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror}): "
                                       f"choose another port with --port") from None
