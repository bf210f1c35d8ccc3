"""The poem studio: a local web page and JSON API that write poems with a trained model.

``kedro serve`` (see :mod:`tangshi_pipeline.cli`) loads the model, vocabulary, tone lexicon, rhyme
table and training lines once through the project's catalog (:mod:`.load`) and serves:

* :mod:`.poet` — requests → validated parameters (the ``generate`` pipeline's own rules) → the
  decoder → poems annotated for the page (tones, template, rhyme groups, checker verdict, copied
  lines, Traditional characters, score);
* :mod:`.batching` — requests that arrive together are decoded together, on one worker thread;
* :mod:`.app` — the FastAPI application: ``/`` (the page, ``static/``), ``/api/poems``,
  ``/api/models``, ``/api/health``, ``/openapi.json`` and an offline ``/docs``.
"""
