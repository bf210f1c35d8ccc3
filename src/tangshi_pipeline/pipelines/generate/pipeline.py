from kedro.pipeline import Node, Pipeline

from .nodes import generate_poems, report_generation


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(generate_poems, ["model", "vocab", "tone_lexicon", "rhyme_table", "vectors", "params:generate"],
                 ["generated_poems", "poems_page"], name="generate_poems", tags="poems"),
            Node(report_generation,
                 ["generated_poems", "vectors", "vocab", "tone_lexicon", "rhyme_table", "params:generate"],
                 "generation_report", name="report_generation", tags="evaluation"),
        ],
        namespace="generate",
        prefix_datasets_with_namespace=False,
    )
