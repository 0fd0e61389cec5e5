"""Point networks, chosen by name in a point model's ``network:`` block::

    model:
      type: point
      network: {type: kpconvx, preset: small, first_cell: 0.5}     # or type: point_transformer

Each entry's ``Config`` is derived from the network's own config dataclass (``KPConvXConfig``,
``PointTransformerConfig``): a ``preset`` (one of the dataclass's preset constructors) and
every field of the network config, optional (null keeps the preset's value), so the two never
drift. ``resolve()`` gives the network config, ``build(in_channels, num_classes, cfg, cond_channels)`` the
module ``forward(points [N, 3], features [N, F], batch [N], cond=[B, D] | None) -> logits [N, C]``
(``cond``: the FiLM conditioning vectors of the batch's sets when ``cond_channels = D > 0``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Literal, get_type_hints

from data.errors import UserError
from pipeline.registry import NETWORKS


def network_config(name: str, config_cls: type, presets: tuple[str, ...], defaults: dict[str, Any]) -> type:
    """The spec dataclass of a network: ``preset`` plus every field of ``config_cls`` as an
    optional override (``defaults`` replace a preset's value unless the spec gives one)."""
    hints = get_type_hints(config_cls)
    fields = [("preset", Literal[presets], field(default=presets[0]))]
    fields += [(f.name, hints[f.name] | None, field(default=defaults.get(f.name)))
               for f in dataclasses.fields(config_cls)]

    def resolve(self) -> Any:
        """``config_cls.<preset>(**the overrides that are not null)``."""
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dataclasses.asdict(self).items()
                  if v is not None and k != "preset"}
        try:
            return getattr(config_cls, self.preset)(**values)
        except (ValueError, TypeError) as exc:
            raise UserError(f"network: {exc}") from None

    cls = dataclasses.make_dataclass(name, fields, namespace={
        "resolve": resolve, "__post_init__": lambda self: self.resolve()})   # validated when parsed
    cls.__module__ = __name__
    cls.__doc__ = (f"``preset`` ({', '.join(presets)}) and values replacing the preset's "
                   f"(``{config_cls.__qualname__}``); null keeps the preset's.")
    return cls


def _kpconvx():
    import kpconvx

    return kpconvx


def _pointtransformer():
    import pointtransformer

    return pointtransformer


@NETWORKS.register("kpconvx")
class KPConvXNetwork:
    """KPConvX (``kpconvx.KPConvXSegNet``); ``first_cell`` defaults to 0.25 m (the presets' 0.04 m
    is indoor scale)."""

    Config = network_config("KPConvXNetworkConfig", _kpconvx().KPConvXConfig, ("small", "full"),
                            {"first_cell": 0.25})

    @staticmethod
    def build(in_channels: int, num_classes: int, cfg: Any, cond_channels: int = 0) -> Any:
        return _kpconvx().KPConvXSegNet(in_channels, num_classes, cfg, cond_channels)


@NETWORKS.register("point_transformer")
class PointTransformerNetwork:
    """Point Transformer blocks (torch-geometric's ``PointTransformerConv``) on the same hierarchy."""

    Config = network_config("PointTransformerNetworkConfig", _pointtransformer().PointTransformerConfig,
                            ("small",), {})

    @staticmethod
    def build(in_channels: int, num_classes: int, cfg: Any, cond_channels: int = 0) -> Any:
        return _pointtransformer().PointTransformerSegNet(in_channels, num_classes, cfg, cond_channels)


__all__ = ["KPConvXNetwork", "PointTransformerNetwork", "network_config"]
