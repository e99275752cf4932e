"""Evaluation: preference accuracy, scoring and sampling over files."""

from grm_jax.eval.preference import (pair_accuracy, rmbench_levels, rmbench_matrix,
                                     rmbench_summary)
from grm_jax.eval.score import ScoreOptions, score_encoded, score_file

__all__ = ["ScoreOptions", "pair_accuracy", "rmbench_levels", "rmbench_matrix", "rmbench_summary",
           "score_encoded", "score_file"]
