from kedro.pipeline import Pipeline, node, pipeline

from .nodes import evaluate_model, train, training_curve


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(train, ["vectors", "vocab", "params:training", "training_checkpoints"],
                 ["model", "training_history"], name="train"),
            node(evaluate_model, ["model", "vectors", "vocab", "params:training"], "training_metrics",
                 name="evaluate"),
            node(training_curve, "training_history", "training_curve", name="plot_training_curve"),
        ]
    )
