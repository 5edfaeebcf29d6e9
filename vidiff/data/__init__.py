"""Video data: clip datasets decoded by decord (PyAV as fallback), the procedural shapes domain, and video file I/O
(MP4 / GIF / PNG / frame folders with the settings stored inside).

May import: numpy, decord, av, imageio, opencv and `vidiff.devices`; never models, diffusion or anything above.
"""
