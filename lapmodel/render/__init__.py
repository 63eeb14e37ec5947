"""The differentiable renderer as pure functions."""
