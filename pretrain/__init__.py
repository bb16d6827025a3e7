"""Masked-acoustic-model pretraining of Mockingjay / AALBERT (Mockingjay, arXiv 1910.12638)."""
from pretrain.config import PretrainConfig, default_budget
from pretrain.train import ensure_pretrained, run_pretraining

__all__ = ["PretrainConfig", "default_budget", "ensure_pretrained", "run_pretraining"]
