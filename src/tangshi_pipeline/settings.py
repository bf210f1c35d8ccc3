"""Project settings (see https://docs.kedro.org/en/stable/configure/configuration_basics/)."""

from tangshi_pipeline.plumbing.cache import CachedSession, CacheNotice
from tangshi_pipeline.plumbing.hooks import ShowPoems, ValidateParameters
from tangshi_pipeline.plumbing.run_status import RunStatusHook

# Hooks run in last-in-first-out order.
HOOKS = (ValidateParameters(), RunStatusHook(), CacheNotice(), ShowPoems())

# kedro-viz's own run hooks know nothing of the stage cache; RunStatusHook writes the same files.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-viz",)

# Default (sequential) runs skip up-to-date nodes; `kedro run --force` runs everything. A run without
# the cache (plain KedroSession, --runner=ThreadRunner/ParallelRunner) says so: CacheNotice.
SESSION_CLASS = CachedSession

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # an environment's parameters file changes only the keys it names (conf/gpu: the larger preset)
    "merge_strategy": {"parameters": "soft"},
}
