"""polytask: train, customize and serve multi-task Llama-family language models."""

__version__ = "0.1.0"
