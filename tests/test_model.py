"""The model: shapes for every cell, raw logits (no ReLU), and the artifact round trip."""

import json

import pytest
import torch
from kedro.io import DatasetError, Version

from tangshi_pipeline.plumbing.datasets import ModelArtifact
from tangshi_pipeline.poet.artifact import Artifact, ArtifactError, load_artifact, save_artifact
from tangshi_pipeline.poet.model import CharRNN, ModelConfig


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_shapes_and_state(cell):
    model = CharRNN(ModelConfig(50, cell=cell, embedding_dim=6, hidden_dim=10, num_layers=2, dropout=0.1))
    logits, state = model(torch.randint(0, 50, (3, 7)))
    assert logits.shape == (3, 7, 50)
    more, _ = model(torch.randint(0, 50, (3, 1)), state)  # continues from the returned state
    assert more.shape == (3, 1, 50)
    hidden, _ = model.features(torch.randint(0, 50, (3, 7)))
    assert hidden.shape == (3, 7, 10)


def test_defaults_are_the_classic_size_and_logits_can_be_negative():
    config = ModelConfig(7181)
    assert (config.cell, config.embedding_dim, config.hidden_dim, config.num_layers) == ("lstm", 100, 128, 2)
    torch.manual_seed(0)
    logits, _ = CharRNN(ModelConfig(30, hidden_dim=8, embedding_dim=4))(torch.randint(0, 30, (2, 5)))
    assert (logits < 0).any()  # no ReLU on the logits (the classic bug)


def test_artifact_round_trip(tmp_path):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(30, cell="gru", embedding_dim=4, hidden_dim=8, num_layers=1))
    meta = {"vocab_fingerprint": "abc", "training": {"epochs": 2}, "metrics": {"val_loss": 3.2}}
    dataset = ModelArtifact(str(tmp_path / "poet"), version=Version(None, None))
    dataset.save(Artifact(model, meta))
    loaded = ModelArtifact(str(tmp_path / "poet"), version=Version(None, None)).load()
    assert loaded.meta == meta and loaded.model.config == model.config and not loaded.model.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), k
    folder = next((tmp_path / "poet").iterdir()) / "poet"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.safetensors"]
    assert json.loads((folder / "config.json").read_text("utf-8"))["architecture"]["cell"] == "gru"


def test_artifact_refuses_a_mismatched_config(tmp_path):
    save_artifact(tmp_path, Artifact(CharRNN(ModelConfig(30, hidden_dim=8, embedding_dim=4))))
    config = json.loads((tmp_path / "config.json").read_text("utf-8"))
    config["architecture"]["hidden_dim"] = 9
    (tmp_path / "config.json").write_text(json.dumps(config), "utf-8")
    with pytest.raises(ArtifactError, match="does not match the architecture"):
        load_artifact(tmp_path)


def test_missing_model_names_the_command(tmp_path):
    with pytest.raises(DatasetError, match="kedro run --pipelines=training"):
        ModelArtifact(str(tmp_path / "poet"), version=Version(None, None)).load()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 3])
def test_parameter_shapes_are_the_built_models_without_building_it(cell, layers):
    from tangshi_pipeline.poet.model import parameter_shapes

    config = ModelConfig(11, cell=cell, embedding_dim=5, hidden_dim=7, num_layers=layers)
    built = {name: tuple(t.shape) for name, t in CharRNN(config).state_dict().items()}
    assert parameter_shapes(config) == built


def test_model_config_from_json_round_trips_and_rejects_unknown_keys():
    from dataclasses import asdict

    config = ModelConfig(30, cell="gru", embedding_dim=4, hidden_dim=8, num_layers=1, dropout=0.25)
    assert ModelConfig.from_json(asdict(config)) == config
    with pytest.raises(ValueError, match=r"architecture: unknown keys \['heads'\]"):
        ModelConfig.from_json({**asdict(config), "heads": 8})
    with pytest.raises(ValueError, match="architecture is missing"):
        ModelConfig.from_json(None)


def test_a_config_without_architecture_is_named(tmp_path):
    save_artifact(tmp_path, Artifact(CharRNN(ModelConfig(30, hidden_dim=8, embedding_dim=4))))
    config = json.loads((tmp_path / "config.json").read_text("utf-8"))
    del config["architecture"]
    (tmp_path / "config.json").write_text(json.dumps(config), "utf-8")
    with pytest.raises(ArtifactError, match=f"{tmp_path / 'config.json'}: architecture is missing"):
        load_artifact(tmp_path)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_one_token_at_a_time_is_the_forward_pass(cell):
    """The single-step form decoding uses (the fused LSTM step for an LSTM) against the whole sequence."""
    from tangshi_pipeline.poet.model import select_state

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(30, cell=cell, embedding_dim=6, hidden_dim=10, num_layers=2)).eval()
    ids = torch.randint(0, 30, (4, 9))
    step, state, outs = model.stepper(), None, []
    with torch.no_grad():
        whole, _ = model.features(ids)
        for t in range(ids.shape[1]):
            h, state = step(ids[:, t], state)
            outs.append(h)
        assert torch.allclose(torch.stack(outs, 1), whole, atol=1e-6)
        keep = torch.tensor([True, False, True, False])  # finished poems drop out of the batch
        kept, _ = step(ids[keep, 0], select_state(state, keep))
        assert torch.allclose(kept, step(ids[:, 0], state)[0][keep], atol=1e-6)


def test_a_model_of_another_vocabulary_is_one_check_naming_the_dataset():
    from tangshi_pipeline.poet.artifact import vocabulary_mismatch
    from tangshi_pipeline.poet.vocab import Vocab

    vocab = Vocab(("<pad>", "<unk>", "G", "E", "春"), (0, 0, 1, 1, 1))
    model = CharRNN(ModelConfig(len(vocab), hidden_dim=4, embedding_dim=2))
    assert vocabulary_mismatch(Artifact(model, {"vocab_fingerprint": vocab.fingerprint}), vocab) is None
    problem = vocabulary_mismatch(Artifact(model, {"vocab_fingerprint": "0" * 64}), vocab)
    assert problem.startswith("the model was trained on vocabulary 000000000000… but the dataset `vocab`")
    bigger = Vocab((*vocab.tokens, "月"), (*vocab.counts, 1))
    assert "5 output tokens" in vocabulary_mismatch(Artifact(model, {"vocab_fingerprint": bigger.fingerprint}), bigger)


ADAPTIVE = dict(embedding_dim=5, hidden_dim=16, num_layers=1, head="adaptive", adaptive_cutoffs=(8, 20))


def test_adaptive_head_shapes_artifact_and_one_way_to_read_it(tmp_path):
    from tangshi_pipeline.poet.model import nll, parameter_shapes

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(30, **ADAPTIVE))
    assert parameter_shapes(model.config) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ids = torch.randint(1, 30, (3, 7))
    ids[0, 4:] = 0  # padding
    hidden, _ = model.features(ids[:, :-1])
    logits = model.logits(hidden)
    assert logits.shape == (3, 6, 30) and torch.allclose(logits.exp().sum(-1), torch.ones(3, 6))
    assert model.nll(hidden, ids[:, 1:], fused=True).item() == pytest.approx(nll(logits, ids[:, 1:]).item(), rel=1e-5)
    save_artifact(tmp_path, Artifact(model))
    loaded = load_artifact(tmp_path)
    assert loaded.model.config == model.config
    assert torch.equal(loaded.model(ids)[0], model.eval()(ids)[0])


def test_bad_adaptive_cutoffs_are_named():
    with pytest.raises(ValueError, match=r"architecture.adaptive_cutoffs = \[20, 8\]"):
        ModelConfig.from_json({"vocab_size": 30, "head": "adaptive", "adaptive_cutoffs": [20, 8]})
    with pytest.raises(ValueError, match=r"architecture.head = 'tiny'"):
        ModelConfig.from_json({"vocab_size": 30, "head": "tiny"})
