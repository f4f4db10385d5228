"""Named in a fork server's preload (``aperio_assets.processes.worker_context``): botocore's S3 data
is read once there, and every worker forked from it has it (each saved ~0.2 s of CPU at its first S3
client)."""

from aperio_assets.storage.s3 import load_botocore_data

load_botocore_data()
