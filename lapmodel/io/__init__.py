"""Reading and writing: the training data stream, checkpoints, exports."""
