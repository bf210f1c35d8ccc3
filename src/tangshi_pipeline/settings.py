"""Project settings (see https://docs.kedro.org/en/stable/configure/configuration_basics/)."""

from tangshi_pipeline.cache import CachedSession
from tangshi_pipeline.hooks import ValidateParameters

# Hooks run in last-in-first-out order.
HOOKS = (ValidateParameters(),)

# Default (sequential) runs skip up-to-date nodes; `kedro run --force` runs everything.
SESSION_CLASS = CachedSession

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
