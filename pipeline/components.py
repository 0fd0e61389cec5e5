"""Every spec component, registered: the one import that fills ``STEPS`` and ``MODELS``.

Entry points (``run.py``, the tests' ``conftest.py``, scripts using ``pipeline.spec`` or
``pipeline.bundle``) import this module once; nothing else imports modules for their
registration side effect.
"""
from __future__ import annotations

from .models import ckconv_model, point_model, random_forest  # noqa: F401  (model types; point_model: its networks)
from .steps import evaluate, features, predict, train  # noqa: F401  (step types)
