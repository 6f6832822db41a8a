"""Training a run: the entry points (:mod:`~convae.training.train`), the loop
(:mod:`~convae.training.trainer`), what each batch becomes (:mod:`~convae.training.batches`), the
objectives, where samples live (:mod:`~convae.training.feed`), TensorBoard, the run directory and
torchrun. Inference never imports this package."""
