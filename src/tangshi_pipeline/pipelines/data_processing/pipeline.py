from kedro.pipeline import Node, Pipeline

from .nodes import build_prosody, build_vocab, clean_poems, extract_keywords, flatten_corpus, frame_poems, vectorize

# Each node is wired to exactly the parameters it reads, one input per key: the stage cache then
# re-runs a node only when one of those keys changes (split_salt re-runs vectorize alone).


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(flatten_corpus,
                 {"raw_corpus": "raw_corpus",
                  "skip_bad_partitions": "params:data_processing.skip_bad_partitions"},
                 ["poems", "ingest_report"], name="flatten", tags="corpus"),
            Node(clean_poems,
                 {"poems": "poems", "ingest_report": "ingest_report",
                  "opencc_config": "params:data_processing.opencc_config",
                  "drop_if_contains": "params:data_processing.drop_if_contains",
                  "min_length": "params:data_processing.min_length",
                  "max_length": "params:data_processing.max_length",
                  "dedupe": "params:data_processing.dedupe",
                  "start_token": "params:data_processing.start_token",
                  "end_token": "params:data_processing.end_token"},
                 ["clean_poems", "cleaning_report"], name="clean", tags="corpus"),
            Node(frame_poems,
                 {"clean_poems": "clean_poems",
                  "start_token": "params:data_processing.start_token",
                  "end_token": "params:data_processing.end_token"},
                 "framed_poems", name="frame", tags="model_input"),
            Node(build_vocab,
                 {"framed_poems": "framed_poems",
                  "start_token": "params:data_processing.start_token",
                  "end_token": "params:data_processing.end_token",
                  "min_count": "params:data_processing.min_count"},
                 "vocab", name="build_vocab", tags="model_input"),
            Node(vectorize,
                 {"framed_poems": "framed_poems", "vocab": "vocab",
                  "split": "params:data_processing.split",
                  "split_salt": "params:data_processing.split_salt"},
                 ["vectors", "vectorize_report"], name="vectorize", tags="model_input"),
            Node(build_prosody,
                 {"clean_poems": "clean_poems", "pingshui_table": "pingshui_table",
                  "opencc_config": "params:data_processing.opencc_config"},
                 ["tone_lexicon", "rhyme_table"], name="build_prosody", tags="prosody"),
            Node(extract_keywords,
                 {"clean_poems": "clean_poems", "vocab": "vocab",
                  "keywords": "params:data_processing.keywords"},
                 ["poem_keywords", "keywords_report"], name="extract_keywords", tags="model_input"),
        ],
        namespace="data_processing",
        prefix_datasets_with_namespace=False,
    )
