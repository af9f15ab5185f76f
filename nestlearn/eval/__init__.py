"""nestlearn.eval: LM and continual-learning metrics, S-NIAH and MQAR tasks, seed stats, reports,
and the in-context memory probe (`probe`)."""

from nestlearn.eval import answer_training, compare, niah, probe, recall
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
    "answer_training",
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "bits_per_char",
    "check_matrix",
    "compare",
    "forgetting",
    "just_learned",
    "niah",
    "perplexity",
    "plot_losses",
    "probe",
    "recall",
    "summarize",
    "write_report",
]
