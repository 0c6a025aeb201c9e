"""Extraction: preprocessing, the two noise protocols, U-Net hooks, batching into a store."""

from .extractor import Extractor
from ..settings import ExtractionSettings, PROTOCOLS
from .run import ExtractionReport, extract, extract_like, prepare_for_model

__all__ = ["PROTOCOLS", "ExtractionReport", "ExtractionSettings", "Extractor", "extract", "extract_like",
           "prepare_for_model"]
