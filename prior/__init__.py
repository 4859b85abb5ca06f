"""A frozen video diffusion prior with score distillation."""
