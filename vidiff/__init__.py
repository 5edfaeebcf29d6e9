"""vidiff: image diffusion models extended to video."""
