"""Several GPUs (or CPU processes) working on one model call, over torch.distributed."""
