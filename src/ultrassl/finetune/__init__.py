"""Downstream evaluation: classification and segmentation fine-tuning with grouped k-fold."""
