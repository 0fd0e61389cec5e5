"""Point Transformer (Zhao et al., 2021) from torch-geometric's ``PointTransformerConv`` on the
project's own neighbour hierarchy (``hierarchy.build_hierarchy``: grid-subsampled stages, radius
neighbours); no pyg-lib needed."""
from .network import PointTransformerBlock, PointTransformerConfig, PointTransformerSegNet, edge_index_of

__all__ = ["PointTransformerConfig", "PointTransformerSegNet", "PointTransformerBlock", "edge_index_of"]
