"""Spec-driven segmentation pipeline: schema, registry, runner, bundles, prediction, evaluation."""

__version__ = "0.1.0"
