"""Analyses of U-Net representations: plain functions on (N, C, rows, cols) arrays (numpy or torch,
float16/float32; computed in float32 or float64) plus streaming accumulators with
``update(batch, image_indices=None)`` / ``merge(other)`` / ``result()`` / ``state_dict()`` / ``get_params()``.

Non-finite input raises :class:`NonFiniteInputError` naming the layer. No model code is imported
here; torch is used only for the published ("paper") position probe and to accept tensors.
"""

from ._arrays import NonFiniteInputError, as_float32, check_finite
from ._base import Accumulator, accumulator_class
from .anomalies import (AnomalyDetector, AnomalyNormAccumulator, anomaly_relative_norms, compare_labels,
                        detect_anomalies, detect_in_map)
from .borders import (BorderArtifactsAccumulator, GroupSimilarityAccumulator, border_artifacts, crop_box,
                      crop_pixels, crop_plan, group_masks, group_similarity)
from .correspondence import REGIONS, ViewMatchingAccumulator, ViewMatchingResult, chance_bias_rate, match_views
from .channels import (MassiveChannelAccumulator, MassiveChannelResult, channel_magnitudes, detect_massive_channels,
                       massive_channels, norm_map_without, without_channels)
from .norms_without import NormsWithoutAccumulator, anomalies_without
from .intervals import Bootstrap, Interval, PerImageStats, bootstrap_interval
from .keypoints import (KEYPOINT_ALPHAS, KEYPOINT_REGIONS, KeypointMatchingAccumulator, KeypointMatchingResult,
                        PairKeypoints, match_keypoints, predict_keypoints)
from .labels import LabelFileError, load_labels, resolve_labels, save_labels, validate_labels
from .position import PaperTraining, PositionProbeAccumulator, n_train_images, position_probe
from .probe_paper import PaperProbeAccumulator
from .recurrence import RecurrenceResult, position_recurrence
from .results import (GROUPS, AnomalyDetectionResult, AnomalyNormResult, BorderArtifactsResult,
                      GroupSimilarityResult, ProbeResult, to_jsonable)
from .views import (VIEWS, Correspondence, KnownView, crop_correspondence, crop_view, flip_correspondence, flip_view,
                    shift_correspondence, shift_view)
from .similarity import (MEASURES, SimilarityMapAccumulator, TokenMeanAccumulator, norm_map, reference_token,
                         similarity_map)

__all__ = [
    "NonFiniteInputError", "as_float32", "check_finite", "Accumulator", "accumulator_class",
    "similarity_map", "norm_map", "reference_token", "MEASURES", "SimilarityMapAccumulator",
    "TokenMeanAccumulator",
    "position_probe", "n_train_images", "PositionProbeAccumulator", "PaperProbeAccumulator", "PaperTraining",
    "ProbeResult",
    "group_similarity", "border_artifacts", "group_masks", "crop_pixels", "crop_box", "crop_plan",
    "GroupSimilarityAccumulator", "BorderArtifactsAccumulator", "GroupSimilarityResult",
    "BorderArtifactsResult", "GROUPS",
    "detect_anomalies", "detect_in_map", "compare_labels", "anomaly_relative_norms", "AnomalyDetector",
    "AnomalyNormAccumulator", "AnomalyDetectionResult", "AnomalyNormResult",
    "load_labels", "save_labels", "validate_labels", "resolve_labels", "LabelFileError",
    "Bootstrap", "Interval", "PerImageStats", "bootstrap_interval", "position_recurrence", "RecurrenceResult",
    "to_jsonable",
    "channel_magnitudes", "massive_channels", "detect_massive_channels", "norm_map_without", "without_channels",
    "MassiveChannelAccumulator", "MassiveChannelResult", "NormsWithoutAccumulator", "anomalies_without",
    "VIEWS", "KnownView", "Correspondence", "flip_correspondence", "shift_correspondence", "crop_correspondence",
    "flip_view", "shift_view", "crop_view", "REGIONS", "ViewMatchingAccumulator", "ViewMatchingResult",
    "match_views", "chance_bias_rate",
    "KEYPOINT_ALPHAS", "KEYPOINT_REGIONS", "PairKeypoints", "KeypointMatchingAccumulator", "KeypointMatchingResult",
    "match_keypoints", "predict_keypoints",
]
