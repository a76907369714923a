"""The text's lessons beside the engine: the demos of ``numbaconv demo`` and the pictures
(training curves, kernels, feature maps)."""
