"""Recipes: multi-step pipelines and their configs."""
