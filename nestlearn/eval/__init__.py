"""nestlearn.eval: language-model metrics and the run report."""

from nestlearn.eval.perplexity import bits_per_char, perplexity
from nestlearn.eval.report import plot_losses, write_report

__all__ = ["bits_per_char", "perplexity", "plot_losses", "write_report"]
