"""nestlearn.eval: language-model metrics, continual-learning metrics and the run report."""

from nestlearn.eval.continual import (
    ContinualMetrics,
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    check_matrix,
    forgetting,
    just_learned,
    summarize,
)
from nestlearn.eval.perplexity import bits_per_char, perplexity
from nestlearn.eval.report import plot_losses, write_report

__all__ = [
    "ContinualMetrics",
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "bits_per_char",
    "check_matrix",
    "forgetting",
    "just_learned",
    "perplexity",
    "plot_losses",
    "summarize",
    "write_report",
]
