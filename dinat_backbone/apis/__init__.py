"""Inference with a DiNAT backbone outside the toolboxes: multi-scale features of images
(:mod:`.features`) and ImageNet classification (:mod:`.classification`)."""
