"""metakd: Meta-KD cross-domain distillation of text classifiers."""

__version__ = "0.1.0"
