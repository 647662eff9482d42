"""Shared fixtures of the pretraining tests: one intra-op thread (tiny models; see tests/rsvheat/heads/_backbones)."""

from tests.rsvheat.heads._backbones import single_torch_thread as single_torch_thread  # autouse
