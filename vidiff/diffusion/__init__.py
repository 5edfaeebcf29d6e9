"""Diffusion itself, model-free: noise schedules and prediction types (diffusers' scheduler configs), samplers over
a denoiser function (k-diffusion style), and sampling plans that decide which frames are sampled together.

May import: torch and `vidiff.devices`; never models (a plan gets the model as a function), loaders, pipelines,
training, evaluation or the app.
"""
