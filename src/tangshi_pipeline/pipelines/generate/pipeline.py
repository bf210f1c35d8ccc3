from kedro.pipeline import Pipeline, node, pipeline

from .nodes import generate_poems, report_generation


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(generate_poems, ["model", "vocab", "tone_lexicon", "rhyme_table", "vectors", "params:generate"],
                 ["generated_poems", "poems_page"], name="generate_poems"),
            node(report_generation,
                 ["generated_poems", "vectors", "vocab", "tone_lexicon", "rhyme_table", "params:generate"],
                 "generation_report", name="report_generation"),
        ]
    )
