"""Model components usable as ``model: {type: ...}`` in a train step.

Importing this package registers every model type in ``pipeline.registry.MODELS``.
"""
from . import random_forest  # noqa: F401
from . import ckconv_model  # noqa: F401
from . import kpconvx_model  # noqa: F401
