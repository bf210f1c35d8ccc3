"""`kedro serve` as a user starts it (a subprocess in the throw-away project), and the page in
Debian's headless Chromium: type an acrostic, submit, read the poems and their annotations from
the DOM, switch to Traditional characters, reopen the permalink, narrow to phone width."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tangshi_pipeline.poet.prosody import FORMS
from tests.helpers import KEDRO, kedro, kedro_env
from tests.studio.browser import Browser, chromium, free_port, session_members, write_with_acrostic
from tests.studio.conftest import model_versions



def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(studio_project):
    port = free_port()
    log = (studio_project / "serve.log").open("w")
    proc = subprocess.Popen([KEDRO, "serve", "--port", str(port)], cwd=studio_project, env=kedro_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                _get(url + "api/health")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (studio_project / "serve.log").read_text()[-3000:]
                    raise RuntimeError(f"kedro serve did not start:\n{tail}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()  # uvicorn shuts down on SIGTERM
        proc.wait(timeout=30)
        log.close()


def test_serve_loads_the_latest_model_once_and_logs_the_url(server, studio_project):
    log = (studio_project / "serve.log").read_text()
    assert f"Poem studio: {server}" in log
    latest = model_versions(studio_project)[-1]
    assert _get(server + "api/health")["model"] == latest == _get(server + "api/models")["served"]
    body = json.dumps({"form": "wujue", "acrostic": "白日黄河", "strategy": "sample", "num_samples": 2}).encode()
    request = urllib.request.Request(server + "api/poems", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert len(json.loads(response.read())["poems"]) == 2


def test_serve_without_a_trained_model_names_the_command_that_trains_one(studio_project):
    env = studio_project / "conf/nomodel"
    env.mkdir(exist_ok=True)
    (env / "catalog.yml").write_text("model:\n  type: tangshi_pipeline.plumbing.datasets.ModelArtifact\n"
                                     "  filepath: data/06_models/none\n  versioned: true\n", "utf-8")
    out = kedro(studio_project, "serve", "--env", "nomodel", "--port", str(free_port()), timeout=60)
    assert out.returncode != 0
    assert "no trained model yet" in out.stderr and "kedro run --pipelines=training" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_serve_with_an_unknown_model_version_lists_the_versions(studio_project):
    out = kedro(studio_project, "serve", "--model-version", "1999-01-01T00.00.00.000Z", "--port", str(free_port()),
                timeout=60)
    assert out.returncode != 0 and "does not exist" in out.stderr
    assert model_versions(studio_project)[0] in out.stderr and "kedro models" in out.stderr


def test_serve_on_a_busy_port_says_so_before_loading_anything(studio_project):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = kedro(studio_project, "serve", "--port", str(port), timeout=60)
    assert out.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in out.stderr and "--port" in out.stderr
    assert "Loading data from model" not in out.stdout + out.stderr


def test_serve_loads_the_model_and_decodes_on_one_thread(studio_project, monkeypatch):
    # torch's small operators cost several times more on a thread that was not the first to run
    # torch (8 poems: ~40 ms vs ~110 ms): `kedro serve` loads and decodes on its one decoder thread
    import threading

    import uvicorn
    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from tangshi_pipeline.cli import serve
    from tangshi_pipeline.poet.decoding import Decoder

    threads: dict[str, set[int]] = {"load": set(), "decode": set()}
    init, generate = Decoder.__init__, Decoder.generate

    def load(self, *args, **kwargs):
        threads["load"].add(threading.get_ident())
        init(self, *args, **kwargs)

    def decode(self, *args, **kwargs):
        threads["decode"].add(threading.get_ident())
        return generate(self, *args, **kwargs)

    answers = []

    def run(app, **_):  # in place of uvicorn's server: one request through the app it was given
        with TestClient(app) as client:
            answers.append(client.post("/api/poems", json={"begin_words": ["日"]}).status_code)

    monkeypatch.setattr(Decoder, "__init__", load)
    monkeypatch.setattr(Decoder, "generate", decode)
    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.chdir(studio_project)
    result = CliRunner().invoke(serve, ["--port", str(free_port())])
    assert result.exit_code == 0, result.output
    assert answers == [200]
    assert len(threads["load"]) == 1 and threads["decode"] == threads["load"] != {threading.get_ident()}


NO_CHROMIUM = pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (`apt-get install "
                                 "chromium fonts-wqy-zenhei`; .ci/run does it)")


@NO_CHROMIUM
def test_closing_the_browser_ends_all_its_processes_and_removes_its_profile():
    # Chromium's helpers can outlive its main process by a moment, writing into the profile: removing
    # it then failed now and then with "Directory not empty: 'Default'" (tests/test_viz.py in CI)
    for _ in range(3):
        browser = Browser("about:blank", 640, 480)
        leader, profile = browser._proc.pid, Path(browser._profile.name)
        assert session_members(leader)
        browser.close()
        assert session_members(leader) == [] and not profile.exists()


@NO_CHROMIUM
def test_the_page_in_a_real_browser(server, tmp_path):
    with Browser(server, 1280, 900) as b:
        write_with_acrostic(b, "白日黄河")  # the page opens on 七绝, strict tones, rhyme, 8 sampled candidates
        poems = b.evaluate("""Array.from(document.querySelectorAll('#poems .poem')).map(p => ({
            rank: Number(p.dataset.rank),
            lines: Array.from(p.querySelectorAll('.line')).map(l => Array.from(l.querySelectorAll('.ch')).map(c => ({
                c: c.querySelector('.c').textContent, t: c.querySelector('.t').textContent,
                req: c.querySelector('.req').textContent, rhyme: c.classList.contains('rhymes'),
                group: c.querySelector('.rg') ? c.querySelector('.rg').textContent : null,
                failing: c.classList.contains('failing')}))),
            verdict: p.querySelector('.verdict').textContent}))""")
        assert poems and [p["rank"] for p in poems] == sorted(p["rank"] for p in poems)
        n_lines, n_chars = FORMS["qijue"]
        for poem in poems:
            assert len(poem["lines"]) == n_lines and all(len(line) == n_chars for line in poem["lines"])
            assert [line[0]["c"] for line in poem["lines"]] == list("白日黄河")
            assert all(c["t"] in "平仄○?" for line in poem["lines"] for c in line)
            assert all(c["req"] in ("平", "仄", "") for line in poem["lines"] for c in line)
            assert any(c["req"] for line in poem["lines"] for c in line)  # strict: the template is shown
            rhymes = [c for line in poem["lines"] for c in line if c["rhyme"]]
            assert len(rhymes) in (2, 3) and all(c["group"] for c in rhymes)
            assert not any(c["failing"] for line in poem["lines"] for c in line)
            assert "平仄 ✓" in poem["verdict"] and "押韵 ✓" in poem["verdict"]
        search = b.evaluate("location.search")
        assert "acrostic=%E7%99%BD%E6%97%A5%E9%BB%84%E6%B2%B3" in search and "seed=" in search
        b.screenshot(tmp_path / "studio.png")
        assert (tmp_path / "studio.png").stat().st_size > 20_000

        # 繁體: the same poems in Traditional characters (黄 → 黃), and the permalink keeps it
        simplified = b.evaluate("document.getElementById('poems').innerText")
        b.evaluate("document.querySelector('input[name=script][value=t]').click()")
        traditional = b.evaluate("document.getElementById('poems').innerText")
        assert "黃" in traditional and "黄" not in traditional and traditional != simplified
        assert b.evaluate("document.querySelector('.poem-body').lang") == "zh-Hant"

        # the permalink: a fresh page on the URL writes exactly the same poems
        permalink = b.evaluate("location.href")
        assert "script=t" in permalink
        b.navigate(permalink)  # a new document (Browser.navigate waits for it), which writes the poems itself
        b.wait_for("document.querySelectorAll('#poems .poem').length > 0")
        assert b.evaluate("document.getElementById('poems').innerText") == traditional

        # free verse: the rules that need a form are greyed out
        b.evaluate("document.querySelector('input[name=form][value=free]').click()")
        assert b.evaluate("['tones', 'rhyme', 'no_copy'].every(id => document.getElementById(id).disabled)")

        # beam search: its size field shows (and is sent) only once beam is picked; 3 best of a beam of 4
        hidden = "document.getElementById('beam-field').hidden && document.getElementById('beam_size').disabled"
        assert b.evaluate(hidden)
        assert b.evaluate("getComputedStyle(document.getElementById('beam-field')).display") == "none"
        b.evaluate("document.querySelector('input[name=strategy][value=beam]').click()")
        assert not b.evaluate(f"({hidden.replace('&&', '||')})")
        b.evaluate("document.getElementById('beam_size').value = 4; document.getElementById('num_samples').value = 3;"
                   "document.getElementById('poems').replaceChildren(); document.getElementById('write').click()")
        b.wait_for("document.querySelectorAll('#poems .poem').length > 0 && "
                   "document.getElementById('results').getAttribute('aria-busy') === 'false'")
        assert b.evaluate("document.querySelectorAll('#poems .poem').length") == 3  # distinct: none folded
        assert "beam search, beam size 4" in b.evaluate("document.getElementById('status').textContent")
        assert "strategy=beam" in b.evaluate("location.search") and "beam_size=4" in b.evaluate("location.search")
        b.evaluate("document.querySelector('input[name=strategy][value=sample]').click()")
        assert b.evaluate(hidden)

        # keyboard: no positive tabindex (DOM order is the focus order); every control is reachable
        assert b.evaluate("Array.from(document.querySelectorAll('[tabindex]')).every(e => e.tabIndex <= 0)")
        # phone width: nothing wider than the screen
        b.resize(390, 844)
        time.sleep(0.3)
        assert b.evaluate("document.documentElement.scrollWidth") <= 390
        b.screenshot(tmp_path / "studio-phone.png")
