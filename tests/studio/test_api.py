"""The studio's API through an ASGI test client, on a tiny model trained in a throw-away project:
every field and error, reproducibility, merged requests, and agreement with the generate pipeline."""

from __future__ import annotations

import asyncio
import json
import re
from html.parser import HTMLParser
from importlib.resources import files

import httpx
import pytest
from fastapi.testclient import TestClient

from tangshi_pipeline.poet.prosody import clauses, format_ok, templates
from tangshi_pipeline.studio.app import Poems, create_app
from tangshi_pipeline.studio.load import load_poet
from tangshi_pipeline.studio.poet import API_FIELDS, MAX_POEMS
from tests.helpers import ROOT, nest, shipped_params
from tests.studio.conftest import model_versions

QIJUE = {"form": "qijue", "acrostic": "白日黄河", "tones": "strict", "rhyme": True, "strategy": "sample",
         "num_samples": 8, "seed": 7, "temperature": 1.0}


@pytest.fixture(scope="module")
def poet(studio_project):
    return load_poet(studio_project)


@pytest.fixture(scope="module")
def client(poet):
    with TestClient(create_app(*poet)) as client:
        yield client


def post(client, body) -> httpx.Response:
    response = client.post("/api/poems", json=body)
    assert "Traceback" not in response.text
    return response


# --------------------------------------------------------------------------------- poems


def test_candidates_are_ranked_by_score_and_annotated(client, poet, studio_project):
    p = poet[0]
    response = post(client, QIJUE)
    assert response.status_code == 200, response.text
    data = response.json()
    poems = data["poems"]
    assert [x["rank"] for x in poems] == list(range(1, 9))
    assert sorted(x["index"] for x in poems) == list(range(8))
    scores = [x["score"] for x in poems]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    by_index = sorted(poems, key=lambda x: x["index"])
    expected = p.decoder.mean_logprobs([x["text"] for x in by_index])
    assert [x["score"] for x in by_index] == pytest.approx(expected, abs=1e-4)
    assert data["model"] == model_versions(studio_project)[-1] and data["settings"]["seed"] == 7
    qijue = {t.name: t for t in templates("qijue")}
    for poem in poems:
        assert format_ok(poem["text"], "qijue") and [c[0] for c in clauses(poem["text"])] == list("白日黄河")
        verdict = poem["verdict"]
        assert verdict["format"] and verdict["tones"] and verdict["rhyme"] and verdict["failing"] == []
        assert poem["held_to"] == verdict["template"] or poem["fallbacks"]
        template = qijue[verdict["template"]]
        assert [x["text"] + x["punctuation"] for x in poem["lines"]] == re.findall("[^，。]+[，。]", poem["text"])
        for i, line in enumerate(poem["lines"]):
            assert len(line["traditional"]) == len(line["text"]) == 7
            for j, c in enumerate(line["chars"]):
                assert c["tone"] == p.prosody.tone(c["char"])
                assert c["required"] == template.lines[i][j]
                assert c["fits"] is (None if c["required"] == "*" else True)
                assert (c["rhyme"] is not None) == (template.rhymes[i] and j == 6)
                if c["rhyme"]:
                    assert c["rhyme"]["ok"] and verdict["rhyme_group"] in c["rhyme"]["groups"]
            assert line["copied_from"] == p.sources.get(line["text"], [])


@pytest.mark.parametrize("body", [QIJUE, {"begin_words": ["日", "月"], "num_samples": 2},
                                  {"form": "wulv", "begin_words": ["日"], "strategy": "greedy"}])
def test_the_answer_is_exactly_the_documented_schema(client, body):
    # the poems are returned as built (FastAPI does not re-validate them): the Poems model must
    # still describe every field, no more and no fewer
    response = post(client, body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert Poems.model_validate(data).model_dump(mode="json") == data


def test_loose_poems_show_their_failing_positions(client):
    body = {**QIJUE, "tones": "loose", "rhyme": False, "temperature": 2.0, "seed": 3}
    poems = post(client, body).json()["poems"]
    failing = [p for p in poems if p["verdict"]["failing"]]
    assert failing, "at temperature 2 a loose poem breaks some position"
    for poem in failing:
        for i, j in poem["verdict"]["failing"]:
            c = poem["lines"][i]["chars"][j]
            assert c["fits"] is False or (c["rhyme"] and not c["rhyme"]["ok"])
        assert not poem["verdict"]["tones"] or not poem["verdict"]["rhyme"]


def test_traditional_text_is_opencc_s2t_of_the_poem(client):
    import opencc

    s2t = opencc.OpenCC("s2t")
    poems = post(client, {**QIJUE, "acrostic": "黄河白日"}).json()["poems"]
    assert all(p["traditional"] == s2t.convert(p["text"]) for p in poems)
    assert any(p["traditional"] != p["text"] for p in poems)  # 黄 → 黃 at least


def test_copied_lines_name_the_poems_they_come_from(poet, studio_project):
    import pandas as pd

    from tangshi_pipeline.pipelines.generate.nodes import training_clauses
    from tangshi_pipeline.poet.vocab import Vocab

    p = poet[0]
    data = studio_project / "data"
    vectors = pd.read_parquet(data / "05_model_input/vectors.parquet")
    assert set(p.sources) == training_clauses(vectors, p.vocab)  # the no_copy lines, the same set
    clean = pd.read_parquet(data / "03_primary/clean_poems.parquet").set_index("id")
    row = vectors[vectors["split"] == "train"].iloc[0]
    text = Vocab.decode(p.vocab, row["ids"])
    line = clauses(text)[0]
    poem = p.annotate(0, text, "free", -1.0, None, 0)
    assert {"title": clean.loc[row["id"], "title"], "author": clean.loc[row["id"], "author"]} in \
        poem["lines"][0]["copied_from"]
    assert poem["lines"][0]["text"] == line


def test_same_settings_and_seed_same_poems_and_the_echoed_settings_reproduce_them(client):
    first = post(client, QIJUE).json()
    again = post(client, QIJUE).json()
    echoed = post(client, first["settings"]).json()  # what the permalink sends
    other = post(client, {**QIJUE, "seed": 8}).json()
    texts = lambda d: [p["text"] for p in d["poems"]]  # noqa: E731
    assert texts(first) == texts(again) == texts(echoed) != texts(other)
    assert set(first["settings"]) == set(API_FIELDS)


@pytest.mark.parametrize("params", [
    QIJUE,
    {"form": "free", "begin_words": ["白", "春"], "strategy": "greedy", "num_samples": 4},
    {"form": "wujue", "begin_words": ["白"], "strategy": "sample", "num_samples": 8, "seed": 11, "top_k": 20,
     "no_repeat_ngram": 1},
    {"form": "wujue", "begin_words": ["白"], "tones": "strict", "rhyme": True, "strategy": "beam", "beam_size": 4,
     "num_samples": 3},
])
def test_the_pipeline_and_the_server_write_the_same_poems(client, studio_project, params):
    from kedro.framework.session import KedroSession

    full = {**shipped_params("generate"), **params}
    with KedroSession.create(project_path=studio_project, runtime_params=nest({"generate": full})) as session:
        session.run(pipeline_names=["generate"])
    out = studio_project / "data/07_model_output/generated_poems.json"
    latest = sorted(p for p in out.iterdir() if not p.name.startswith("."))[-1]
    pipeline = json.loads((latest / "generated_poems.json").read_text("utf-8"))
    server = sorted(post(client, params).json()["poems"], key=lambda p: p["index"])
    assert [p["text"] for p in server] == [p["text"] for p in pipeline]
    assert [p["held_to"] for p in server] == [p["template"] for p in pipeline]


async def _post_all(poet, bodies: list[dict], window: float, together: bool) -> tuple[list[list[dict]], dict]:
    """POST each body to a fresh app with this batching window, one after another or all at once;
    each answer's poems and /api/health after them."""
    app = create_app(*poet, window=window)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://studio") as c:
            if together:
                answers = await asyncio.gather(*(c.post("/api/poems", json=b) for b in bodies))
            else:
                answers = [await c.post("/api/poems", json=b) for b in bodies]
            health = (await c.get("/api/health")).json()
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return [a.json()["poems"] for a in answers], health


def test_requests_that_arrive_together_are_decoded_together_and_keep_their_poems(poet):
    """Each request alone, then all at once through a long batching window: the same poems, fewer batches."""
    bodies = [{**QIJUE, "seed": s, "num_samples": n} for s, n in ((1, 1), (2, 3), (3, 8), (1, 5), (9, 16))]
    bodies += [{**QIJUE, "form": "wujue", "acrostic": "春江花月", "seed": 4, "num_samples": 2}]  # another group

    def run(window: float, together: bool):
        answers, health = asyncio.run(_post_all(poet, bodies, window, together))
        return [[(p["text"], p["score"], p["rank"]) for p in a] for a in answers], health

    alone, health_alone = run(0.0, False)
    merged, health = run(0.3, True)
    assert merged == alone
    assert health_alone["batches"] == len(bodies)
    assert health["requests"] == len(bodies) and health["batches"] == 2  # one per settings group


def test_beam_requests_are_merged_only_with_the_same_beam_size_and_candidates(poet):
    """A beam's candidates are its best distinct poems, best first; requests of other beam sizes or
    candidate counts are decoded apart, and merging never changes a request's poems."""
    beam = {**QIJUE, "strategy": "beam", "beam_size": 4, "num_samples": 2}
    bodies = [beam, {**beam, "acrostic": "黄河白日"}, {**beam, "beam_size": 3}, {**beam, "num_samples": 3},
              {**beam, "form": "free", "acrostic": None, "begin_words": ["白", "春"], "tones": "loose",
               "rhyme": False}]

    alone, _ = asyncio.run(_post_all(poet, bodies, 0.0, False))
    merged, health = asyncio.run(_post_all(poet, bodies, 0.3, True))
    poems = lambda answers: [[(p["text"], p["score"]) for p in a] for a in answers]  # noqa: E731
    assert poems(merged) == poems(alone)
    assert health["batches"] == 4  # the first two together; other beam size, other count, other form apart
    for body, poems in zip(bodies, alone):
        n, starts = body["num_samples"], len(body["begin_words"]) if not body["acrostic"] else 1
        assert [p["rank"] for p in poems] == list(range(1, n * starts + 1))
        by_index = [p["score"] for p in sorted(poems, key=lambda p: p["index"])]  # each beam's, best first
        assert all(by_index[k] >= by_index[k + 1] for k in range(n * starts - 1) if (k + 1) % n)
        texts = [p["text"] for p in poems]
        assert len(set(texts)) == len(texts)
        if body["form"] == "qijue":
            assert all(p["verdict"]["tones"] and p["verdict"]["rhyme"] for p in poems)


def test_decoding_happens_off_the_event_loop(poet):
    """While a batch decodes on the worker thread, the loop still answers /api/health."""
    import threading

    app = create_app(*poet, window=0.0)
    started, release = threading.Event(), threading.Event()
    run = app.state.batcher.run

    def slow(key, items):
        started.set()
        release.wait(10)
        return run(key, items)

    app.state.batcher.run = slow

    async def scenario():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://studio") as c:
                poems = asyncio.create_task(c.post("/api/poems", json=QIJUE))
                await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
                health = await asyncio.wait_for(c.get("/api/health"), 5)
                release.set()
                return health, await poems

    health, poems = asyncio.run(scenario())
    assert health.status_code == 200 and health.json()["waiting_poems"] == 0
    assert poems.status_code == 200


# -------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("body, field, message", [
    ({"form": "sonnet"}, "form", "Input should be 'free', 'wujue'"),
    ({"form": "qilv", "acrostic": "白日黄河"}, "acrostic", "has 4 characters but form qilv has 8 lines"),
    ({"form": "free", "begin_words": ["龘"]}, "begin_words", "character '龘' is not in the model's vocabulary"),
    ({"form": "wujue", "acrostic": "白日龘河"}, "acrostic", "character '龘' is not in the model's vocabulary"),
    ({"form": "free", "begin_words": ["，"]}, "begin_words", "special token or punctuation"),
    ({"form": "free", "tones": "strict"}, "tones", "need a regular form"),
    ({"form": "free", "rhyme": True}, "tones", "need a regular form"),
    ({"form": "free", "no_copy": True}, "no_copy", "needs a regular form"),
    ({"tones": "tight"}, "tones", "Input should be 'loose' or 'strict'"),
    ({"strategy": "topk"}, "strategy", "Input should be 'greedy', 'sample' or 'beam'"),
    ({"strategy": "beam", "beam_size": 0}, "beam_size", "greater than or equal to 1"),
    ({"strategy": "beam", "beam_size": 65}, "beam_size", "less than or equal to 64"),
    ({"strategy": "beam", "beam_size": 2, "num_samples": 3}, "num_samples", "more than beam_size = 2"),
    ({"temperature": 0}, "temperature", "greater than 0"),
    ({"temperature": 11}, "temperature", "less than or equal to 10"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
    ({"top_k": -1}, "top_k", "greater than or equal to 0"),
    ({"num_samples": 0}, "num_samples", "greater than or equal to 1"),
    ({"num_samples": MAX_POEMS + 1, "begin_words": ["白"]}, "num_samples", f"at most {MAX_POEMS}"),
    ({"num_samples": 9, "begin_words": ["白", "日"]}, "num_samples", "= 18 poems"),
    ({"max_length": 0}, "max_length", "greater than or equal to 1"),
    ({"max_length": 201}, "max_length", "less than or equal to 200"),
    ({"no_repeat_ngram": 17}, "no_repeat_ngram", "less than or equal to 16"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"seed": 2**32}, "seed", "less than or equal to 4294967295"),
    ({"begin_words": ["白日"]}, "begin_words", "begin_words[0]: String should have at most 1 character"),
    ({"begin_words": []}, "begin_words", "at least 1 item"),
    ({"acrostic": ""}, "acrostic", "at least 1 character"),
    ({"acrostic": "白" * 17, "form": "free"}, "acrostic", "at most 16 characters"),
    ({"rhyme": "maybe"}, "rhyme", "valid boolean"),
    ({"num_samples": "many"}, "num_samples", "valid integer"),
    ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
    ({"batch_size": 4}, "batch_size", "set by the server"),
    ({"keywords": ["秋", "月", "山", "江"]}, "keywords", "at most 3 items"),
    ({"keywords": ["秋风起"]}, "keywords", "keywords[0]: String should have at most 2 characters"),
    ({"keywords": ["白"]}, "keywords", "trained without themes"),  # the studio's model learnt no themes
    ({"device": "cuda"}, "device", "set by the server"),
])
def test_every_bad_field_is_a_422_that_names_it(client, body, field, message):
    base = {"begin_words": ["白"], "num_samples": 1}  # the shipped begin words are not all in the fixture
    response = post(client, {**base, **body})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(d["field"] == field and d["loc"] == ["body", field] and message in d["msg"] for d in detail), detail
    assert all(d["msg"].startswith(d["field"]) for d in detail)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"qijue"', "must be a JSON object"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 16000 + b"]" * 300, "not valid JSON"),  # nested deeper than Python's recursion limit
    (b'{"temperature": NaN}', "temperature: Input should be"),
    (b'{"top_p": Infinity}', "top_p: Input should be"),
])
def test_a_body_that_is_not_a_json_object_is_a_422(client, content, message):
    response = client.post("/api/poems", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422 and message in response.json()["detail"][0]["msg"], response.text
    assert "Traceback" not in response.text


def test_an_oversized_body_is_a_413_declared_or_streamed(client):
    big = json.dumps({"acrostic": "白" * 20000}).encode()
    assert client.post("/api/poems", content=big).status_code == 413
    streamed = client.post("/api/poems", content=iter([big[:10000], big[10000:]]))  # no content-length
    assert streamed.status_code == 413 and "over 16384 bytes" in streamed.json()["detail"][0]["msg"]


def test_an_empty_body_writes_the_project_s_default_poems(client, poet):
    response = client.post("/api/poems")
    # the shipped begin words include 湖, which the fixture corpus lacks: named, not a crash
    assert response.status_code == 422 and "'湖'" in response.json()["detail"][0]["msg"]
    assert post(client, {"begin_words": ["白"]}).json()["settings"]["form"] == shipped_params("generate")["form"]


def test_an_unexpected_error_is_a_one_line_500(poet):
    app = create_app(*poet)

    def broken(key, items):
        raise RuntimeError("a bug deep in decoding")

    app.state.batcher.run = broken
    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.post("/api/poems", json=QIJUE)
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error (the server's log has the details)"}


def test_a_full_queue_is_a_503_with_retry_after(poet):
    app = create_app(*poet)
    app.state.batcher.max_waiting = 4
    with TestClient(app) as c:
        response = c.post("/api/poems", json=QIJUE)  # 8 poems > 4 waiting allowed
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


# ------------------------------------------------------------------- models, health, page


def test_models_lists_every_version_and_which_is_served(client, studio_project):
    data = client.get("/api/models").json()
    versions = model_versions(studio_project)
    assert [v["version"] for v in data["versions"]] == versions[::-1]  # newest first
    assert data["served"] == versions[-1] and [v["served"] for v in data["versions"]] == [True, False]
    assert data["versions"][0]["metrics"]["train_loss"] > 0
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["model"] == versions[-1]


def test_a_pinned_model_version_is_served(studio_project):
    older = model_versions(studio_project)[0]
    poet, models = load_poet(studio_project, model_version=older)
    with TestClient(create_app(poet, models)) as c:
        assert c.get("/api/models").json()["served"] == older
        assert post(c, {"begin_words": ["白"], "num_samples": 1}).json()["model"] == older


def test_the_request_schema_is_generate_params_with_the_project_s_defaults(client):
    spec = client.get("/openapi.json").json()
    schema = spec["paths"]["/api/poems"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == set(API_FIELDS) and schema["additionalProperties"] is False
    shipped = shipped_params("generate")
    assert {k: v.get("default") for k, v in schema["properties"].items()} == {k: shipped[k] for k in API_FIELDS}
    assert schema["properties"]["num_samples"]["maximum"] == MAX_POEMS
    assert {"/api/poems", "/api/models", "/api/health"} <= set(spec["paths"])


class _Labels(HTMLParser):
    def __init__(self):
        super().__init__()
        self.inputs, self.labelled, self.depth = [], set(), 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "label":
            self.depth += 1
            if "for" in a:
                self.labelled.add(a["for"])
        elif tag in ("input", "button", "select", "textarea"):
            self.inputs.append((a.get("id"), self.depth > 0 or "aria-label" in a or tag == "button"))

    def handle_endtag(self, tag):
        if tag == "label":
            self.depth -= 1


def test_the_page_works_offline_and_every_control_has_a_label(client):
    page = client.get("/")
    assert page.status_code == 200 and 'lang="zh-Hans"' in page.text
    parser = _Labels()
    parser.feed(page.text)
    unlabelled = [i for i, wrapped in parser.inputs if not wrapped and i not in parser.labelled]
    assert parser.inputs and not unlabelled
    static = files("tangshi_pipeline.studio") / "static"
    for name in ("index.html", "studio.css", "studio.js", "docs.html"):
        text = (static / name).read_text("utf-8")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), f"{name} reaches the network"
        assert client.get(f"/static/{name}").status_code == 200
    assert "WenQuanYi Zen Hei" in (static / "studio.css").read_text("utf-8")
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text and "swagger" not in docs.text.lower()


def test_a_wheel_ships_the_page(tmp_path):
    """A wheel built from a clean copy of the sources (no stale build/ folder) has the static files."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("tangshi_pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"tangshi_pipeline/studio/static/{n}" for n in ("index.html", "studio.css", "studio.js", "docs.html")}
    assert shipped <= names
