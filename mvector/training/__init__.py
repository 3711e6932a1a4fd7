"""Training layer: the trainer (phases and callbacks), optimisers and schedules, distributed set-up."""
