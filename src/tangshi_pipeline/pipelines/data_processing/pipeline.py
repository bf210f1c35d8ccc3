from kedro.pipeline import Pipeline, node, pipeline

from .nodes import build_prosody, build_vocab, clean_poems, flatten_corpus, frame_poems, vectorize


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(flatten_corpus, ["raw_corpus", "params:data_processing"], ["poems", "ingest_report"],
                 name="flatten"),
            node(clean_poems, ["poems", "ingest_report", "params:data_processing"],
                 ["clean_poems", "cleaning_report"], name="clean"),
            node(frame_poems, ["clean_poems", "params:data_processing"], "framed_poems", name="frame"),
            node(build_vocab, ["framed_poems", "params:data_processing"], "vocab", name="build_vocab"),
            node(vectorize, ["framed_poems", "vocab", "params:data_processing"],
                 ["vectors", "vectorize_report"], name="vectorize"),
            node(build_prosody, ["clean_poems", "params:data_processing"], ["tone_lexicon", "rhyme_table"],
                 name="build_prosody"),
        ]
    )
