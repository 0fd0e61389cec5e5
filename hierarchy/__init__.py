"""The point hierarchy and encoder-decoder shared by the point networks (``kpconvx``,
``pointtransformer``): grid-subsampled stages with their neighbour indices, and the U-Net
over them."""
from .stages import Hierarchy, StageGrid, build_hierarchy
from .unet import (BN_EPS, LEAKY_SLOPE, HierarchyUNet, StageFiLM, check_features, encoder_decoder, interpolate,
                   max_pool, modulate, stage0_features, unary)

__all__ = ["StageGrid", "Hierarchy", "build_hierarchy", "BN_EPS", "LEAKY_SLOPE", "unary", "max_pool",
           "interpolate", "check_features", "stage0_features", "encoder_decoder", "HierarchyUNet", "StageFiLM", "modulate"]
