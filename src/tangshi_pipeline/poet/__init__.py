"""The poet: vocabulary, model, batching, training, decoding and prosody — the domain, knowing
nothing of Kedro. The pipelines (``tangshi_pipeline.pipelines``) call it; the Kedro plumbing
(``tangshi_pipeline.plumbing``) stores what it makes.

params (typed parameters) · vocab · model (the network, its step, its loss) · artifact (a model on
disk) · batching · training (train_poet, fit) with training_state, objective, devices, progress ·
distributed (Comm) · checkpoints · decoding with sampling and constraints · prosody.
"""
