"""Measuring models: FLOP counting (:mod:`.flops`) and benchmark helpers
(:mod:`.benchmark_utils`)."""
