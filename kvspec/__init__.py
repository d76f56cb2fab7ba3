__version__ = "0.1.0"

# The main entry points (kvspec.build): a model's exact cache spec from a config, a preset or hub id, or a model object.
from .build import from_config, from_pretrained, from_model  # noqa: E402,F401
from .spec import CacheSpec, InvalidChunks, ModelCacheSpec  # noqa: E402,F401
from .config import (KVSpecError, ConfigError, ConfigNotFound, UnknownModelType,  # noqa: E402,F401
                     UnsupportedCache)

# Every other error kvspec raises, importable from the top (`from kvspec import PoolExhausted`): their modules
# are imported on first use only, so `import kvspec` stays as light as the spec itself.
_LAZY_ERRORS = {"InvalidBudget": "units", "PoolError": "pool", "PoolExhausted": "pool",
                "CorruptCacheFile": "store", "SpecMismatch": "store", "CacheWriteError": "store", "WeightsError": "weights",
                "ServeError": "promptcache", "DemoModelError": "demo", "ShardError": "shard", "NeverFits": "admission", "Overloaded": "admission"}

def __getattr__(name):
    if name in _LAZY_ERRORS:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY_ERRORS[name]}", __name__), name)
    raise AttributeError(f"module 'kvspec' has no attribute {name!r}")

__all__ = ["from_config", "from_pretrained", "from_model", "ModelCacheSpec", "CacheSpec", "KVSpecError", "ConfigError",
           "ConfigNotFound", "UnknownModelType", "UnsupportedCache", "InvalidChunks", *_LAZY_ERRORS]
