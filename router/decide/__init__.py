"""Deciding: assessment (numpy and scalar evaluators of the rule table), allocation
(the Python walks and the compiled walk), outcomes, and the :class:`Router`."""
