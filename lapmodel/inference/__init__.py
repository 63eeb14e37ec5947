"""Photos to reconstructions."""
