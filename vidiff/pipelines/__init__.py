"""Making videos: `VideoPipeline` (text-to-video, image-to-video, continuation, interpolation, video-to-video,
long videos), the checks a request passes before any work, memory knobs, and batch generation.

May import: models, diffusion, loaders, data and `vidiff.devices`; never evaluation (scoring belongs there),
training or the app.
"""
