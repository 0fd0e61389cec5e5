"""KPConvX: kernel point convolution with attention, and a segmentation network of it."""
from .kernel_points import fibonacci_sphere, shell_kernel_points
from .layer import KPConvXBlock, KPConvXLayer, drop_path, kernel_aggregate, nearest_kernel_point

__all__ = [
    "KPConvXLayer", "KPConvXBlock", "fibonacci_sphere", "shell_kernel_points",
    "drop_path", "kernel_aggregate", "nearest_kernel_point",
]

from .network import Hierarchy, KPConvXConfig, KPConvXSegNet, build_hierarchy  # noqa: E402

__all__ += ["KPConvXConfig", "KPConvXSegNet", "Hierarchy", "build_hierarchy"]
