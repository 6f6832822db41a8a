"""Using a trained run: :mod:`~convae.inference.run` (load, encode, reconstruct),
:mod:`~convae.inference.scoring` (maps and scores), evaluation against PCA, anomaly scoring and its
reports, export. Imports nothing from :mod:`convae.training`."""
