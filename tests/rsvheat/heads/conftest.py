"""Fixtures for the head tests."""

from tests.rsvheat.heads._backbones import single_torch_thread as single_torch_thread
