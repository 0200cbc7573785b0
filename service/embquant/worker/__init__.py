"""The batching worker: an asyncio front (queue, futures, deadlines), one device
thread that runs batches of encodes and decodes, and a lane of fit threads. Knows
codecs only as "a codec and a tensor"."""

from .batcher import DecodeJob, EncodeJob, FitJob, Job, ScoreJob, Worker

__all__ = ["DecodeJob", "EncodeJob", "FitJob", "Job", "ScoreJob", "Worker"]
