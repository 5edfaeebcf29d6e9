"""Training: the one accelerate loop (resumable, bit-exact), its YAML configs, and progressive distillation.

May import: pipelines and everything below them; never the app.
"""
