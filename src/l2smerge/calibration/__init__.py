"""Calibration data and the statistics the calibrated merges need (AIM, Sens-Merging).

* Calibration file: JSONL, one object per line with string fields "question",
  "short_answer", "long_answer" (s1K-style). Each method reads the fields it does best with
  (AIM: question + short answer; Sens: question + both answers); a line becomes the question
  in the study's eval prompt (`qwen25-math-cot`) followed by the chosen answers
  (`render_sample`).
* AIM: mean |input activation| per input channel of every nn.Linear of the base model,
  normalised by its max to an importance in [0, 1]. Collected streaming: one decoder layer's
  weights in memory at a time (see `activation_importance`).
* Sens: per-layer sensitivity Σ|δ ⊙ ∇L| of each model's task vector from float32 gradients on
  the calibration text, and cross-task logit alignment between the models
  (see `task_sensitivity`, `cross_task_alignment`, `sens_coefficients`); each model may
  have its own calibration file and fields.
* Cache: every statistic is stored in the l2smerge cache (util/cache.py, under
  $L2SMERGE_CACHE_DIR, default ~/.cache/l2smerge), keyed by the fingerprints of the models,
  of the calibration file, the fields and the settings, so a sweep over ω, α or T computes it
  once.
"""

from l2smerge.calibration.activations import activation_importance, aim_importance
from l2smerge.calibration.data import (
    CALIBRATION_FIELDS,
    DEFAULT_MAX_TOKENS,
    METHOD_FIELDS,
    Sample,
    parse_fields,
    read_calibration,
    render_sample,
    tokenize,
)
from l2smerge.calibration.sensitivity import (
    active_models,
    cross_task_alignment,
    layer_group,
    sens_coefficients,
    sens_statistics,
    task_sensitivity,
)
from l2smerge.util.cache import (
    CACHE_VERSION,
    cache_dir,
    cache_key,
    file_sha256,
    load_cached_json,
    load_cached_tensors,
    model_fingerprint,
    save_cached_json,
    save_cached_tensors,
)

__all__ = [
    "CACHE_VERSION",
    "CALIBRATION_FIELDS",
    "active_models",
    "DEFAULT_MAX_TOKENS",
    "METHOD_FIELDS",
    "Sample",
    "activation_importance",
    "aim_importance",
    "cache_dir",
    "cache_key",
    "cross_task_alignment",
    "file_sha256",
    "layer_group",
    "load_cached_json",
    "load_cached_tensors",
    "model_fingerprint",
    "parse_fields",
    "read_calibration",
    "render_sample",
    "save_cached_json",
    "save_cached_tensors",
    "sens_coefficients",
    "sens_statistics",
    "task_sensitivity",
    "tokenize",
]
