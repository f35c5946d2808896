"""ultrassl: self-supervised pre-training and fine-tuning for ultrasound images and videos."""

__version__ = "0.1.0"
