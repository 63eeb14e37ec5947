"""The training loop and the curriculum."""
