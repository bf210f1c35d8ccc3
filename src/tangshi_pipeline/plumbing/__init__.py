"""The Kedro plumbing: the stage cache, the datasets, hooks, run status and the corpus fetcher.
It stores and schedules what the poet (``tangshi_pipeline.poet``) makes; it never imports the
pipelines."""
