"""Point Transformer as a model component: ``model: {type: point_transformer, ...}``.

The torch-geometric point model (``pointtransformer.PointTransformerSegNet``: PyG's
``PointTransformerConv`` blocks on the project's own grid hierarchy and radius neighbours).
Everything but the network is KPConvX's (:mod:`pipeline.models.kpconvx_model`): the same
spec keys (regions, augmentation, inputs, loss with prior correction, optimiser, votes),
training loop, validation, checkpoints, ``--resume``, torchrun and prediction coverage.

Bundle files: ``weights.pt`` and ``point_transformer_model.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.registry import MODELS

from .kpconvx_model import KPConvXModel, network_overrides, resolve_network


def _config() -> type:
    from pointtransformer import PointTransformerConfig

    return PointTransformerConfig


PTNetworkOverrides = network_overrides(_config(), "PTNetworkOverrides", {})


@MODELS.register("point_transformer")
class PointTransformerModel(KPConvXModel):
    kind = "point_transformer"
    meta_file = "point_transformer_model.json"

    @dataclass
    class Config(KPConvXModel.Config):
        preset: Literal["small"] = "small"
        network: PTNetworkOverrides = field(default_factory=PTNetworkOverrides)

        def network_config(self):
            return resolve_network(self.preset, self.network, _config())

    predict_options = KPConvXModel.predict_options

    def _build_net(self):
        from pointtransformer import PointTransformerSegNet

        return PointTransformerSegNet(self.in_channels, self.class_map.num_classes, self.net_cfg)


__all__ = ["PointTransformerModel", "PTNetworkOverrides"]
