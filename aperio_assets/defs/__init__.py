"""Dagster code for aperio: resources, IO managers, assets, checks, jobs, schedules and sensors.

Everything here calls the library (``aperio_assets.lake``, ``.storage``, ``.state`` …), never the
reverse.
"""
