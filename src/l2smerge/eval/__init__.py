"""Evaluation: benchmarks, prompts, backends (hf, vllm, openai, replay), grading, metrics.

from l2smerge.eval import evaluate
summary = evaluate("path/to/model", "gsm8k,math500", out_dir="runs/m", limit=50)
"""

from l2smerge.eval.benchmarks import BENCHMARKS, STUDY_BENCHMARKS
from l2smerge.eval.run import evaluate

__all__ = ["BENCHMARKS", "STUDY_BENCHMARKS", "evaluate"]
