"""The generate pipeline on an in-memory catalog, and through a KedroSession on the fixture corpus
with a tiny saved model (the files it writes, the model version it loads, its messages)."""

from __future__ import annotations

import json

import pytest
from kedro.runner import SequentialRunner

from tangshi_pipeline.pipelines.generate import create_pipeline
from tangshi_pipeline.poet.artifact import Artifact
from tangshi_pipeline.poet.params import ParameterError
from tests.helpers import memory_catalog, shipped_params
from tests.helpers_models import POEMS, pingshui_prosody, save_model, tiny_model, vectors_of


@pytest.fixture
def processed(project):
    project.run("data_processing")
    return project


def _versions(path):
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))


def test_generate_writes_poems_page_and_report(processed):
    save_model(processed.path)
    processed.run("generate", params={"generate": {"begin_words": list("日红山夜君月")}})  # no 湖 in the fixture
    data = processed.path / "data"
    (version,) = _versions(data / "07_model_output/generated_poems.json")
    poems = json.loads((data / "07_model_output/generated_poems.json" / version / "generated_poems.json").read_text("utf-8"))
    assert [p["begin"] for p in poems] == list("日红山夜君月")
    assert all(p["text"][0] == p["begin"] and len(p["text"]) <= 30 for p in poems)
    assert poems[0]["settings"]["strategy"] == "greedy" and poems[0]["form"] == "free"
    assert set(poems[0]) == {"begin", "acrostic", "form", "text", "lines", "template", "fallbacks", "score",
                             "settings"}
    page = (data / "08_reporting/generated_poems.md").read_text("utf-8")
    assert page.startswith("# Generated poems") and "## 日" in page
    report = json.loads((data / "08_reporting/generation_report.json").read_text("utf-8"))
    assert report["poems"] == 6 and 0 <= report["copy_rate"] <= 1 and "distinct_2" in report
    assert report["mean_score"] == pytest.approx(sum(p["score"] for p in poems) / 6) and report["mean_score"] < 0
    lexicon = json.loads((data / "05_model_input/tone_lexicon.json").read_text("utf-8"))
    assert lexicon["tones"]["流"] == "平"


def test_acrostic_form_with_strict_tones_and_rhyme_in_memory():
    vocab, _, lexicon, rhyme = pingshui_prosody()
    model = Artifact(tiny_model(len(vocab)), {"vocab_fingerprint": vocab.fingerprint})
    settings = {"form": "wujue", "acrostic": "白日依山", "strategy": "sample", "num_samples": 3, "tones": "strict",
                "rhyme": True, "seed": 1, "no_copy": True, "no_repeat_ngram": 2}
    catalog = memory_catalog({"model": model, "vocab": vocab.to_json(), "tone_lexicon": lexicon, "rhyme_table": rhyme,
                              "vectors": vectors_of(vocab, POEMS, ["train"] * len(POEMS))},
                             {"generate": {**shipped_params("generate"), **settings}})
    SequentialRunner().run(create_pipeline(), catalog)
    report = catalog.load("generation_report")
    assert report["poems"] == 3 and report["form"] == "wujue" and report["copy_rate"] == 0
    assert report["format_accuracy"] == report["tonal_conformance"] == report["rhyme_accuracy"] == 1.0
    assert report["settings"]["no_copy"] is True and report["settings"]["no_repeat_ngram"] == 2
    assert "藏头 白日依山" in catalog.load("poems_page")


def test_the_pinned_model_version_is_used(processed):
    save_model(processed.path, seed=1)
    first = _versions(processed.path / "data/06_models/poet")[0]
    save_model(processed.path, seed=2)
    params = {"generate": {"begin_words": list("日红山夜君月")}}
    data = processed.path / "data"
    texts = []
    for load_versions in ({"model": first}, None):
        processed.run("generate", params=params, load_versions=load_versions)
        versions = _versions(data / "07_model_output/generated_poems.json")
        path = data / "07_model_output/generated_poems.json" / versions[-1] / "generated_poems.json"
        texts.append([p["text"] for p in json.loads(path.read_text("utf-8"))])
    assert len(versions) == 2 and texts[0] != texts[1]  # seed-1 model pinned, then the seed-2 latest


@pytest.mark.parametrize("params, message", [
    ({"begin_words": ["龘"]}, "generate.begin_words: character '龘' is not in the model's vocabulary"),
    ({"acrostic": "春江花龘", "form": "wujue"}, "generate.acrostic: character '龘'"),
    ({"begin_words": ["，"]}, "special token or punctuation"),
])
def test_characters_outside_the_vocabulary_are_named(processed, params, message):
    save_model(processed.path)
    with pytest.raises(Exception, match=message):
        processed.run("generate", params={"generate": params})
    assert not (processed.path / "data/07_model_output/generated_poems.json").exists()


@pytest.mark.parametrize("params, message", [
    ({"form": "sonnet"}, r"generate.form = 'sonnet': Input should be 'free', 'wujue'"),
    ({"form": "qilv", "acrostic": "春江花月"}, "acrostic '春江花月' has 4 characters but form qilv has 8 lines"),
    ({"tones": "strict"}, "need a regular form"),
    ({"no_copy": True}, "no_copy: true needs a regular form"),
])
def test_bad_parameters_fail_before_any_work(processed, params, message):
    with pytest.raises(ParameterError, match=message):
        processed.run("generate", params={"generate": params})


def test_missing_model_says_run_training(processed):
    with pytest.raises(Exception, match=r"no trained model in .*run `kedro run --pipelines=training`"):
        processed.run("generate", params={"generate": {"begin_words": ["日"]}})


def test_model_of_another_vocabulary_is_refused(processed):
    save_model(processed.path, fingerprint="0" * 64)
    with pytest.raises(Exception, match=r"trained on vocabulary 000000000000… but the dataset `vocab`"):
        processed.run("generate", params={"generate": {"begin_words": ["日"]}})
    assert not (processed.path / "data/08_reporting/generation_report.json").exists()
