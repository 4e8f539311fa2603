"""Datasets: the Record type, readers/writers of every format, video tools, samplers, synthetic data."""
from .record import DetectionDataset, Record  # noqa: F401
