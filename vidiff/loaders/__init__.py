"""Everything a user downloaded, resolved to one folder loader: vidiff and diffusers model folders, hub ids,
single-file Stable Diffusion checkpoints, community layouts (AnimateDiff, ModelScope) and their conversion,
LoRA and adapter files.

May import: models, diffusion (schedules), data (file I/O) and `vidiff.devices`; never pipelines, training,
evaluation or the app.
"""
