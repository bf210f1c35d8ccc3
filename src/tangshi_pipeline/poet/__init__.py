"""The poet: vocabulary, model, batching, training, decoding and prosody — the domain, knowing
nothing of Kedro. The pipelines (``tangshi_pipeline.pipelines``) call it; the Kedro plumbing
(``tangshi_pipeline.plumbing``) stores what it makes."""
