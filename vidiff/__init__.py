"""vidiff: image diffusion models extended to video.

`vidiff.inflate(image_unet)` and `vidiff.UNet` are imported here (torch + einops only);
`vidiff.VideoPipeline` is loaded on first use, since it pulls in transformers.
"""

__version__ = "0.1.0"

from .inflate import inflate  # noqa: E402
from .unet import UNet, UNetConfig  # noqa: E402

__all__ = ["inflate", "UNet", "UNetConfig", "VideoPipeline"]


def __getattr__(name: str):
    """Lazy `vidiff.VideoPipeline`."""
    if name == "VideoPipeline":
        from .pipeline import VideoPipeline

        return VideoPipeline
    raise AttributeError(f"module 'vidiff' has no attribute {name!r}")
