from kedro.pipeline import Node, Pipeline

from .nodes import build_prosody, build_vocab, clean_poems, flatten_corpus, frame_poems, vectorize


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(flatten_corpus, ["raw_corpus", "params:data_processing"], ["poems", "ingest_report"],
                 name="flatten", tags="corpus"),
            Node(clean_poems, ["poems", "ingest_report", "params:data_processing"],
                 ["clean_poems", "cleaning_report"], name="clean", tags="corpus"),
            Node(frame_poems, ["clean_poems", "params:data_processing"], "framed_poems", name="frame",
                 tags="model_input"),
            Node(build_vocab, ["framed_poems", "params:data_processing"], "vocab", name="build_vocab",
                 tags="model_input"),
            Node(vectorize, ["framed_poems", "vocab", "params:data_processing"],
                 ["vectors", "vectorize_report"], name="vectorize", tags="model_input"),
            Node(build_prosody, ["clean_poems", "params:data_processing"], ["tone_lexicon", "rhyme_table"],
                 name="build_prosody", tags="prosody"),
        ],
        namespace="data_processing",
        prefix_datasets_with_namespace=False,
    )
