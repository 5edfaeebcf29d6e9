"""vidiff: image diffusion models extended to video.

The public names are imported on first use, so `import vidiff` and `vidiff --help` stay fast:
`from vidiff import VideoPipeline, UNet, inflate, consistency, load_config, train, ...`. The package is one
subpackage per capability (docs/design.md): models, diffusion, data (floor 1); loaders, evaluation (2);
pipelines (3); training (4); app (5).
"""

__version__ = "0.1.0"

_PUBLIC = {   # name -> module that defines it
    "UNet": "vidiff.models.unet", "UNetConfig": "vidiff.models.unet", "inflate": "vidiff.models.inflate",
    "VideoPipeline": "vidiff.pipelines.pipeline", "Video": "vidiff.pipelines.pipeline",
    "NoiseSchedule": "vidiff.diffusion.schedule", "SAMPLERS": "vidiff.diffusion.samplers",
    "ClipDataset": "vidiff.data.clips", "read_video": "vidiff.data.io", "write_video": "vidiff.data.io",
    "read_settings": "vidiff.data.io", "consistency": "vidiff.evaluation.bench",
    "load_config": "vidiff.training.config", "train": "vidiff.training.train",
    "with_motion_adapter": "vidiff.loaders.convert",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    """Import a public name from its module on first use."""
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vidiff' has no attribute {name!r}")
