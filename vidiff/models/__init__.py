"""The parts a video model is built from: layers, the one space-time UNet, its temporal families, inflation of an
image UNet, the codecs between pixels and latents, the text encoder, and reading weight files.

May import: torch, einops, transformers/diffusers (for the VAE and CLIP classes) and `vidiff.devices`; never the
diffusion, loaders, pipelines, training, evaluation or app packages.
"""
