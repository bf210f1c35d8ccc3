"""kedro-viz: lineage through its API, previews, the workflow view's run status, and a real
headless Chromium (Debian's, driven over the DevTools protocol) that renders the graph.

One `kedro viz run` serves a throw-away copy of the project (fixture corpus, data_processing run
twice so the last run has cached stages) for the whole module. The server starts offline: with
``https_proxy`` pointing at a closed local port, as `make viz` does, and — where the test may
create a network namespace — inside one with only a loopback interface.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import KEDRO, ROOT, kedro_env, lay_out_project
from tests.studio.browser import Browser, chromium

DP_CHAIN = ["raw_corpus", "data_processing.flatten", "poems", "data_processing.clean", "clean_poems",
            "data_processing.frame", "framed_poems", "data_processing.build_vocab", "vocab",
            "data_processing.vectorize", "vectors"]
PIPELINES = ("data_processing", "training", "generate")
OFFLINE_ENV = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
               "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}


def _free_port() -> int:
    """A free port below 49152 (kedro-viz refuses ports in the dynamic range)."""
    import random

    for port in random.sample(range(20000, 45000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port")


def _get(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _can_isolate_network() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def viz_project(tmp_path_factory):
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    from tangshi_pipeline.plumbing.cache import CachedSession

    root = tmp_path_factory.mktemp("viz") / "project"
    lay_out_project(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        bootstrap_project(root)
        pipelines.configure("tangshi_pipeline.pipeline_registry")
        for params in (None, {"data_processing": {"split_salt": "viz"}}):  # the 2nd run: 4 cached stages
            with CachedSession.create(project_path=root, runtime_params=params) as session:
                session.run(pipeline_names=["data_processing"])
        # Kedro loads only the pipelines a run asks for: re-read the registry for all of them.
        pipelines.configure("tangshi_pipeline.pipeline_registry")
        registered = {name: p for name, p in pipelines.items()}
    return root, registered


@pytest.fixture(scope="module")
def viz_url(viz_project):
    root, _ = viz_project
    port = _free_port()
    cmd = [KEDRO, "viz", "run", "--host", "127.0.0.1", "--port", str(port), "--no-browser"]
    log = (root / "viz.log").open("w")
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, **OFFLINE_ENV}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                _get(f"{url}/api/main", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"kedro viz did not start:\n{(root / 'viz.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, 15)  # the session started above: `kedro viz run` and its server
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        log.close()


def _name(node: dict) -> str:
    """A stage's Kedro node name (its namespace included: kedro-viz shows the short one), a dataset's name."""
    return node.get("full_name") or node["name"]


def _graph(url: str, pipeline_id: str) -> tuple[dict[str, dict], set[tuple[str, str]]]:
    """Nodes by id, and the edges between stages and datasets (kedro-viz also links each collapsed
    pipeline box to its inputs and outputs: those edges are left out)."""
    response = _get(f"{url}/api/pipelines/{pipeline_id}")
    nodes = {n["id"]: n for n in response["nodes"]}
    edges = {(_name(nodes[e["source"]]), _name(nodes[e["target"]])) for e in response["edges"]
             if "modularPipeline" not in (nodes[e["source"]]["type"], nodes[e["target"]]["type"])}
    return nodes, edges


def _reachable(edges: set[tuple[str, str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        here = todo.pop()
        for a, b in edges:
            if a == here and b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def test_lineage_of_every_registered_pipeline(viz_project, viz_url):
    _, registered = viz_project
    main = _get(f"{viz_url}/api/main")
    assert {p["id"] for p in main["pipelines"]} == set(registered)
    for name, pipeline in registered.items():
        nodes, edges = _graph(viz_url, name)
        tasks = {_name(n) for n in nodes.values() if n["type"] == "task"}
        assert tasks == {n.name for n in pipeline.nodes}, name
        expected = {(i, n.name) for n in pipeline.nodes for i in n.inputs}
        expected |= {(n.name, o) for n in pipeline.nodes for o in n.outputs}
        assert edges == expected, name
    # Every stage of every pipeline is in the default view, and data flows from the raw corpus to
    # the last outputs (vectors today; generated poems once the generate pipeline is registered).
    nodes, edges = _graph(viz_url, "__default__")
    assert {n.name for p in registered.values() for n in p.nodes} <= {_name(n) for n in nodes.values()}
    assert all((a, b) in edges for a, b in zip(DP_CHAIN, DP_CHAIN[1:]))
    final = registered.get("generate", registered["data_processing"]).outputs()
    assert final and final <= _reachable(edges, "raw_corpus")
    layers = {n["name"]: n.get("layer") for n in nodes.values() if n["type"] == "data"}
    assert layers["raw_corpus"] == "raw" and layers["clean_poems"] == "primary" and layers["vectors"] == "model_input"
    assert main["layers"][:4] == ["raw", "intermediate", "primary", "model_input"]


def test_each_pipeline_is_one_expandable_box(viz_url):
    """Each pipeline is a namespace: kedro-viz draws it as one box holding its stages (and the
    datasets only it uses), while the datasets keep the names users type."""
    main = _get(f"{viz_url}/api/main")
    boxes = {n["id"]: n for n in main["nodes"] if n["type"] == "modularPipeline"}
    assert set(boxes) == set(PIPELINES)
    tree = main["modular_pipelines"]
    assert set(PIPELINES) <= {child["id"] for child in tree["__root__"]["children"]}
    tasks = [n for n in main["nodes"] if n["type"] == "task"]
    assert tasks and all(n["modular_pipelines"] == [_name(n).split(".")[0]] for n in tasks)
    assert all(_name(n).split(".")[0] in PIPELINES and n["tags"] for n in tasks)
    inside = {child["id"] for child in tree["data_processing"]["children"]}
    names = {n["id"]: n["name"] for n in main["nodes"]}
    assert {"data_processing.flatten", "framed_poems"} <= {_name(n) for n in main["nodes"] if n["id"] in inside}
    assert "vectors" in {names[i] for i in tree["data_processing"]["outputs"]}


def _metadata(url: str, dataset: str) -> dict:
    nodes, _ = _graph(url, "__default__")
    node_id = next(i for i, n in nodes.items() if n["name"] == dataset)
    return _get(f"{url}/api/nodes/{node_id}")


def test_previews_of_tables_and_json(viz_url):
    table = _metadata(viz_url, "clean_poems")
    assert table["preview_type"] == "TablePreview"
    assert table["preview"]["columns"] == ["id", "author", "title", "text", "tones"]
    assert 0 < len(table["preview"]["data"]) <= 10
    for name in ("vocab", "cleaning_report", "vectorize_report"):
        meta = _metadata(viz_url, name)
        assert meta["preview_type"] == "JSONPreview", name
        assert json.loads(meta["preview"]), name
    assert _metadata(viz_url, "vectors")["stats"]["rows"] == 7


def test_training_curve_png_previews(tmp_path):
    """The training curve is a matplotlib.MatplotlibDataset: kedro-viz previews it as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from kedro_datasets.matplotlib import MatplotlibDataset
    from kedro_viz.models.flowchart.node_metadata import DataNodeMetadata
    from kedro_viz.models.flowchart.nodes import GraphNode

    dataset = MatplotlibDataset(filepath=str(tmp_path / "training_curve.png"))
    figure = plt.figure()
    plt.plot([3.0, 2.0, 1.5])
    dataset.save(figure)
    plt.close(figure)
    node = GraphNode.create_data_node(dataset_id="c", dataset_name="training_curve", layer="reporting",
                                      tags=set(), dataset=dataset, modular_pipelines=None)
    meta = DataNodeMetadata(data_node=node)
    assert meta.preview_type == "ImagePreview"
    assert base64.b64decode(meta.preview).startswith(b"\x89PNG")


def test_workflow_view_shows_last_run_with_cached_stages(viz_project, viz_url):
    _, registered = viz_project
    status = _get(f"{viz_url}/api/run-status")
    assert status["pipeline"]["status"] == "success"
    main = _get(f"{viz_url}/api/main")
    ids = {_name(n): n["id"] for n in main["nodes"] if n["type"] == "task"}
    nodes = status["nodes"]
    cached = [f"data_processing.{n}" for n in ("flatten", "clean", "frame", "build_vocab")]
    for name in [*cached, "data_processing.vectorize"]:
        assert nodes[ids[name]]["status"] == "success", name
    assert nodes[ids["data_processing.vectorize"]]["duration"] > 0
    assert all(nodes[ids[n]]["duration"] == 0 for n in cached)
    assert status["datasets"]  # sizes of what the last run loaded and saved


ISOLATED_CHECK = """
import json, os, subprocess, sys, time, urllib.request
proc = subprocess.Popen([sys.argv[1], "viz", "run", "--host", "127.0.0.1", "--port", sys.argv[2], "--no-browser"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
start, result = time.monotonic(), {}
try:
    while time.monotonic() - start < 120:
        try:
            url = "http://127.0.0.1:" + sys.argv[2]
            result["main"] = len(json.loads(urllib.request.urlopen(url + "/api/main", timeout=5).read())["nodes"])
            result["version"] = json.loads(urllib.request.urlopen(url + "/api/version", timeout=30).read())
            result["index"] = b"<div id=\\"root\\">" in urllib.request.urlopen(url + "/", timeout=5).read()
            result["seconds"] = round(time.monotonic() - start, 1)
            break
        except OSError:
            time.sleep(0.5)
finally:
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
print(json.dumps(result))
"""


@pytest.mark.skipif(not _can_isolate_network(), reason="cannot create a network namespace here (needs root)")
def test_viz_starts_with_the_network_unreachable(viz_project, viz_url):
    """`kedro viz run` in a network namespace with only a loopback: starts and serves the graph."""
    root, _ = viz_project
    out = subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1" "$2" "$3"', sys.executable,
         ISOLATED_CHECK, KEDRO, str(_free_port())],
        cwd=root, env=kedro_env(),
        capture_output=True, text=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["main"] > 10 and result["index"] is True
    assert result["version"]["installed"]


def test_viz_started_offline_with_make_viz_settings(viz_project, viz_url):
    root, _ = viz_project
    assert _get(f"{viz_url}/api/version")["installed"]
    assert "Kedro Viz started successfully" in (root / "viz.log").read_text()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_viz_build_writes_its_site_apart_from_the_package_build(viz_project):
    """`kedro viz build` alone writes ./build, where `kedro package` has setuptools put build/lib
    (the package's source); `make viz-build` writes the site to viz-build/ and leaves build/ alone."""
    root, _ = viz_project
    package_build = root / "build/lib/tangshi_pipeline"
    package_build.mkdir(parents=True)
    (package_build / "nodes.py").write_text("# what setuptools copied for the wheel\n")
    result = subprocess.run(
        ["make", "-f", str(ROOT / "Makefile"), "viz-build", f"BIN={Path(sys.executable).parent}",
         "-o", ".venv/.installed"],  # the throw-away project uses this venv: no setup step
        cwd=root, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    site = root / "viz-build"
    assert (site / "index.html").is_file() and json.loads((site / "api/main").read_text())["nodes"]
    assert not (site / "lib").exists() and not (root / ".viz-build.tmp").exists()
    assert sorted(p.relative_to(root).as_posix() for p in (root / "build").rglob("*")) == [
        "build/lib", "build/lib/tangshi_pipeline", "build/lib/tangshi_pipeline/nodes.py"]


# ------------------------------------------------------------------------ real browser


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (`apt-get install chromium`; .ci/run does it)")
def test_browser_renders_the_pipeline(viz_url, tmp_path):
    def rendered(browser: Browser, names: list[str]) -> list[str]:
        """Wait for the graph to show every name; the names still missing at the deadline."""
        deadline = time.monotonic() + 90
        missing = names
        while time.monotonic() < deadline:
            text = browser.evaluate("Array.from(document.querySelectorAll('.pipeline-node'))"
                                    ".map(n => n.textContent).join('|')") or ""
            flat = text.lower().replace(" ", "").replace("_", "")
            missing = [n for n in names if n.replace("_", "") not in flat]
            if not missing:
                break
            time.sleep(0.5)
        return missing

    with Browser(f"{viz_url}/", 1600, 1000) as browser:
        # The default view: one collapsed box per pipeline (its namespace).
        missing = rendered(browser, ["data_processing", "training", "generate"])
        assert not missing, f"pipeline boxes not rendered: {missing}"
        # Expanded, every stage is drawn.
        browser.navigate(f"{viz_url}/?expandAllPipelines=true")
        names = ["flatten", "clean", "frame", "build_vocab", "vectorize"]
        missing = rendered(browser, names)
        time.sleep(1.0)  # let the graph's fade-in finish before the screenshot
        browser.screenshot(tmp_path / "kedro-viz.png")
        assert not missing, f"stages not rendered: {missing}"
        assert browser.evaluate("document.querySelectorAll('.pipeline-node').length") >= len(names)
    assert (tmp_path / "kedro-viz.png").stat().st_size > 10_000
