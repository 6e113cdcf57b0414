"""Checks of the pipeline at the scale of the paper's experiments (COCO 2017, GPU machines)."""
