"""nlp_adagrad: sparse text classifiers trained with Adagrad, per-token learning rates shown."""

__version__ = "0.1.0"
