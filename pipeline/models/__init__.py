"""Model components usable as ``model: {type: ...}`` in a train step (registered by
``pipeline.components``)."""
