__version__ = "0.1.0"

# The main entry point, with from_config / from_pretrained / from_model attached by kvspec.build.
from .build import ModelCacheSpec  # noqa: E402,F401
from .spec import CacheSpec, InvalidChunks  # noqa: E402,F401
from .config import (KVSpecError, ConfigError, ConfigNotFound, UnknownModelType,  # noqa: E402,F401
                     UnsupportedCache)

# Every other error kvspec raises, importable from the top (`from kvspec import PoolExhausted`): their modules
# are imported on first use only, so `import kvspec` stays as light as the spec itself.
_LAZY_ERRORS = {"InvalidBudget": "plan", "PoolError": "pool", "PoolExhausted": "pool",
                "CorruptCacheFile": "store", "SpecMismatch": "store", "CacheWriteError": "store", "WeightsError": "fit",
                "ServeError": "promptcache", "DemoModelError": "demo", "ShardError": "shard"}

def __getattr__(name):
    if name in _LAZY_ERRORS:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY_ERRORS[name]}", __name__), name)
    raise AttributeError(f"module 'kvspec' has no attribute {name!r}")

__all__ = ["ModelCacheSpec", "CacheSpec", "KVSpecError", "ConfigError", "ConfigNotFound", "UnknownModelType",
           "UnsupportedCache", "InvalidChunks", *_LAZY_ERRORS]
