"""Extraction: preprocessing, the two noise protocols, U-Net hooks, batching into a store."""

from .extractor import ExtractionSettings, Extractor, encode_prompt
from ..settings import PROTOCOLS
from .run import ExtractionReport, extract, extract_like, prepare_for_model

__all__ = ["PROTOCOLS", "ExtractionReport", "ExtractionSettings", "Extractor", "encode_prompt", "extract", "extract_like",
           "prepare_for_model"]
