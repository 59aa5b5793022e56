"""Running mmdet/mmseg jobs with DiNAT: the tools' shared command-line and Runner set-up
(:mod:`.cli`, :mod:`.runner`), crash-safe checkpoint saves (:mod:`.checkpoint_hook`) and the
sample-friendly IoU metric (:mod:`.metrics`)."""
