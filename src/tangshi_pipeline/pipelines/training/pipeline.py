from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_model, train, training_curve


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(train, ["vectors", "vocab", "params:training", "training_checkpoints", "poem_keywords"],
                 ["model", "training_history"], name="train", tags="model"),
            Node(evaluate_model,
                 {"model": "model", "vectors": "vectors", "vocab": "vocab",
                  "device": "params:training.device", "threads": "params:training.threads",
                  "precision": "params:training.precision", "poem_keywords": "poem_keywords"},
                 "training_metrics", name="evaluate", tags="evaluation"),
            Node(training_curve, "training_history", "training_curve", name="plot_training_curve",
                 tags="evaluation"),
        ],
        namespace="training",
        prefix_datasets_with_namespace=False,
    )
