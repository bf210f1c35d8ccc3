"""Project settings (see https://docs.kedro.org/en/stable/configure/configuration_basics/)."""

from tangshi_pipeline.hooks import ValidateParameters

# Hooks run in last-in-first-out order.
HOOKS = (ValidateParameters(),)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}
