"""Training: checkpoints, the resumable epoch loop, and the LVM and query-tower trainers."""
