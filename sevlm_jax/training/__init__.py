"""Training: the loop (loop.py), the pure train step (step.py), losses, optimiser, metrics writer."""
