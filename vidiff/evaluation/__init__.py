"""Measuring videos: temporal-consistency metrics (pure functions over frames), the consistency and shapes
benchmarks, scoring a folder across processes and comparing reports.

May import: data and `vidiff.devices`; a benchmark takes a pipeline object as an argument, it never imports the
pipelines, models, training or the app.
"""
