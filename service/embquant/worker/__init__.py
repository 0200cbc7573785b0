"""The batching worker: an asyncio front (queue, futures, deadlines) and one
device thread that runs batches. Knows codecs only as "a codec and a tensor"."""

from .batcher import Job, Worker

__all__ = ["Job", "Worker"]
