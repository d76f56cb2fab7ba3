__version__ = "0.1.0"

# The main entry point, with from_config / from_pretrained / from_model attached by kvspec.build.
from .build import ModelCacheSpec  # noqa: E402,F401
from .spec import CacheSpec  # noqa: E402,F401
