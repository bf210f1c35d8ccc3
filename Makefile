# tangshi-pipeline — every target sets itself up on a fresh machine (idempotent).
#   make run    venv + deps + corpus, then `kedro run`
#   make test   venv + deps + corpus, then the whole test suite
#   make data   fetch the corpus into data/01_raw/tang (npm pack + sha512 check)
#   make viz    kedro-viz on 127.0.0.1 (no browser)
#   make viz-build   kedro-viz's static site in viz-build/ (not build/: `kedro package` uses that)
#   make bench  benchmarks, results to benchmarks/results/
#   make serve  the poem studio (page + JSON API) on http://127.0.0.1:8000/ (PORT=…, MODEL_VERSION=…)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1

.PHONY: setup data run test viz viz-build bench serve clean-data

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $@

data: $(STAMP)
	$(BIN)/python -m tangshi_pipeline.plumbing.corpus

run: data
	$(BIN)/kedro run

test: data
	$(BIN)/python -m pytest

# kedro-viz asks PyPI for a newer version at start-up (30 s timeout); a proxy on a closed local
# port makes that fail at once, so viz starts the same offline or behind a black-holed network.
OFFLINE := https_proxy=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 no_proxy=127.0.0.1,localhost

viz: $(STAMP)
	$(OFFLINE) $(BIN)/kedro viz run --host 127.0.0.1 --no-browser

# `kedro viz build` (kedro-viz 12.5 has no output option) writes ./build, which is also where
# `kedro package` has setuptools build the wheel (build/lib holds the package's source: a site
# published from build/ would carry it). So it runs in a scratch folder that links to the project's
# conf and data (the package is installed), and its site is moved to $(VIZ_BUILD)/; build/ is
# never touched.
VIZ_BUILD ?= viz-build
VIZ_SCRATCH := .viz-build.tmp
viz-build: $(STAMP)
	rm -rf $(VIZ_SCRATCH) && mkdir -p $(VIZ_SCRATCH)/src
	cd $(VIZ_SCRATCH) && ln -s ../conf ../data ../pyproject.toml . && \
	  for f in .telemetry .viz; do if [ -e ../$$f ]; then ln -s ../$$f .; fi; done && \
	  $(OFFLINE) $(abspath $(BIN))/kedro viz build --include-previews
	test -f $(VIZ_SCRATCH)/build/index.html
	rm -rf $(VIZ_BUILD) && mv $(VIZ_SCRATCH)/build $(VIZ_BUILD) && rm -rf $(VIZ_SCRATCH)
	@echo "kedro-viz site in $(VIZ_BUILD)/ (serve it with: python -m http.server -d $(VIZ_BUILD))"

bench: data
	$(BIN)/python benchmarks/run.py

# The poem studio on 127.0.0.1 (needs a trained model: `make run` or `kedro run --pipelines=training`).
PORT ?= 8000
serve: $(STAMP)
	$(BIN)/kedro serve --host 127.0.0.1 --port $(PORT) $(if $(MODEL_VERSION),--model-version $(MODEL_VERSION))

clean-data:
	find data -mindepth 2 -not -name .gitkeep -not -path 'data/01_raw/*' -delete
