"""tangshi-pipeline
"""

import warnings

__version__ = "0.1"

# Warnings reach the log (conf/logging.yml), Kedro's own deprecations included. Silenced here —
# the package is imported before any Kedro command or session does its work — only third-party
# noise that nobody running this project can act on, each by its message:
# - Kedro 1.7's config loader calls omegaconf's register_new_resolver(), which omegaconf deprecates
#   (a UserWarning, three times per run): Kedro's to change.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)
# - kedro-viz 12.5 imports FastAPI's ORJSONResponse, which FastAPI deprecates (at every `kedro viz`
#   start): kedro-viz's to change.
warnings.filterwarnings("ignore", message=r"ORJSONResponse is deprecated")
