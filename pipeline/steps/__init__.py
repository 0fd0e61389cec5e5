"""Step types usable in a spec's ``steps`` list (registered by ``pipeline.components``)."""
