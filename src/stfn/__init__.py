"""STFN: a Spatial-Temporal Fusion Network and the pipeline that trains and operates it."""

__version__ = "0.1.0"
