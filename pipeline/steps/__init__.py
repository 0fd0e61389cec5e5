"""Step types usable in a spec's ``steps`` list; importing registers them in ``STEPS``."""
from . import evaluate, features, predict, train  # noqa: F401
