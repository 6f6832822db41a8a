"""The network: the architecture grammar (:mod:`~convae.network.spec`, no torch), the layer factories
and down/up module pairs (:mod:`~convae.network.layers`) and the mirrored autoencoder
(:mod:`~convae.network.model`). Imports nothing from data, training or inference."""
