"""Replay of historical or generated traffic through the decision core."""

from router.replay.run import ReplayResult, replay

__all__ = ["replay", "ReplayResult"]
