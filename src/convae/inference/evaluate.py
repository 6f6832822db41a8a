"""Evaluate a trained run against PCA at the same code size, with a linear probe on the codes.

Every function takes a run directory (or a :class:`~convae.inference.run.Run`) and
returns plain data, so notebooks get what the command line prints. Metrics are
in the data's original scale: the preprocessing is inverted first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from convae import checkpoint
from convae.data import Dataset, floats, load_for, run_splits
from convae.data.preprocess import corrupt
from convae.errors import ConvaeError
from convae.inference.reports import write_report
from convae.inference.run import Run, as_run, take
from convae.metrics import per_sample_mse, per_sample_ssim, psnr
from convae.parsers import Noise

PROBE_MAX_CODE = 2048


def eval_splits(
    run: Run, data: str | None = None
) -> tuple[Dataset, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(dataset, x_fit, x_eval, y_fit, y_eval): the run's training split and the test split.

    Without a test split, the split the run held out is evaluated (a run that held none
    out: its validation split). With ``data``, that dataset's test split (or all of it)
    is evaluated and its training split (or all of it) is what PCA and the probe fit on.
    """
    cfg = run.config
    dataset = load_for(cfg, data)
    splits = run_splits(dataset, cfg)
    train_idx, val_idx = splits.train, splits.test if len(splits.test) else splits.val
    x, y = dataset.x_train, dataset.y_train
    if dataset.x_test is not None:
        fit, evaluated, y_fit, y_eval = x[train_idx], dataset.x_test, take(y, train_idx), dataset.y_test
    elif data is not None and data != cfg.data:
        fit, evaluated, y_fit, y_eval = x, x, y, y
    elif len(val_idx) == 0:
        raise ConvaeError(f"{cfg.data} has no test split and the run kept no validation split")
    else:
        fit, evaluated, y_fit, y_eval = x[train_idx], x[val_idx], take(y, train_idx), take(y, val_idx)
    return dataset, floats(fit), floats(evaluated), y_fit, y_eval


def held_out_none(run: Run, data: str | None, dataset: Dataset) -> bool:
    """Whether the run's own data has no test split, so that its validation split stands in."""
    own = data is None or data == run.config.data
    return own and dataset.x_test is None and not len(run_splits(dataset, run.config).test)


def fit_subset(x: np.ndarray, y: np.ndarray | None, max_fit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """At most ``max_fit`` of the samples PCA and the probe fit on: a random subset, the same for every call."""
    if len(x) <= max_fit:
        return x, y
    keep = np.sort(np.random.default_rng(0).choice(len(x), max_fit, replace=False))
    return x[keep], take(y, keep)


def reconstruction_metrics(
    x: np.ndarray, x_hat: np.ndarray, data_range: float, labels: np.ndarray | None = None, classes: list | None = None
) -> dict[str, Any]:
    err = per_sample_mse(x, x_hat)
    mse = float(err.mean())
    out: dict[str, Any] = {"mse": mse, "psnr": psnr(mse, data_range)}
    if x.ndim == 4:
        out["ssim"] = float(per_sample_ssim(x, x_hat, data_range).mean())
    if labels is not None:
        names = classes or [str(k) for k in range(int(labels.max()) + 1)]
        out["mse_per_class"] = {
            str(names[k]) if k < len(names) else str(k): float(err[labels == k].mean()) for k in np.unique(labels)
        }
    return out


def linear_probe(codes_fit: np.ndarray, y_fit: np.ndarray, codes_eval: np.ndarray, y_eval: np.ndarray) -> float:
    """Accuracy of a logistic regression fitted on standardised training codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_fit)) < 2:
        raise ConvaeError("the linear probe needs at least two classes in the training labels")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(codes_fit.reshape(len(codes_fit), -1), y_fit)
    return float(probe.score(codes_eval.reshape(len(codes_eval), -1), y_eval))


def evaluate(
    run: str | Path | Run,
    data: str | None = None,
    *,
    probe: bool = True,
    write: bool = True,
    max_fit: int = 20000,
) -> dict[str, Any]:
    """MSE, PSNR, SSIM (and per-class MSE, linear probe) for the model and for PCA at the same code size.

    Writes ``eval.json`` and ``report.md`` (with pictures) into the run
    directory when ``write``. ``max_fit`` caps the training samples PCA and the
    probe fit on (a random subset, fixed seed), which keeps evaluation to seconds.
    """
    from sklearn.decomposition import PCA

    run = as_run(run)
    dataset, x_fit, x_eval, y_fit, y_eval = eval_splits(run, data)
    if run.config.crop is not None and tuple(x_eval.shape[1:]) != tuple(run.model.input_shape):
        raise ConvaeError(
            f"this run trained on {run.config.crop}-pixel patches (--crop) of larger samples: PCA and the probe "
            "compare whole samples; use `convae score` (sliding windows) for it"
        )
    if tuple(x_eval.shape[1:]) != tuple(run.model.input_shape) and run.model.has_dense:
        raise ConvaeError(
            f"the run's model takes inputs shaped {run.model.input_shape}, the data has {tuple(x_eval.shape[1:])}"
        )
    x_fit, y_fit = fit_subset(x_fit, y_fit, max_fit)
    data_range = float(x_fit.max() - x_fit.min()) or 1.0
    code_size = int(np.prod(run.model.code_shape))

    x_hat = run.reconstruct(x_eval)
    model_metrics = reconstruction_metrics(x_eval, x_hat, data_range, y_eval, dataset.classes)
    noise = Noise.parse(run.config.noise)
    if noise is not None:
        # A denoising run: how far its output from a corrupted input is from the clean image,
        # beside how far the corrupted input itself is.
        lo, hi = float(x_fit.min()), float(x_fit.max())
        noisy = corrupt(noise, torch.as_tensor(x_eval), lo, hi, torch.Generator().manual_seed(0)).numpy()
        model_metrics["denoised_mse"] = float(per_sample_mse(x_eval, run.reconstruct(noisy)).mean())
        model_metrics["noisy_input_mse"] = float(per_sample_mse(x_eval, noisy).mean())

    flat_fit = x_fit.reshape(len(x_fit), -1)
    n_components = min(code_size, *flat_fit.shape)
    pca = PCA(n_components=n_components, random_state=0).fit(flat_fit)
    pca_codes_eval = pca.transform(x_eval.reshape(len(x_eval), -1))
    pca_hat = pca.inverse_transform(pca_codes_eval).reshape(x_eval.shape)
    pca_metrics = reconstruction_metrics(x_eval, pca_hat, data_range, y_eval, dataset.classes)

    # A linear probe on codes larger than the probe cap (fully convolutional models) says
    # little about a bottleneck and takes minutes: it is skipped there.
    if probe and y_fit is not None and y_eval is not None and code_size <= PROBE_MAX_CODE:
        codes_fit, codes_eval = run.encode(x_fit), run.encode(x_eval)
        model_metrics["probe_accuracy"] = linear_probe(codes_fit, y_fit, codes_eval, y_eval)
        pca_metrics["probe_accuracy"] = linear_probe(pca.transform(flat_fit), y_fit, pca_codes_eval, y_eval)

    result = {
        "data": data or run.config.data,
        "split": "validation" if held_out_none(run, data, dataset) else "test",
        "samples": len(x_eval),
        "code_size": code_size,
        "model": model_metrics,
        f"pca_{n_components}": pca_metrics,
    }
    if write:
        with checkpoint.all_or_nothing():  # eval.json, report.md and its pictures, or none
            write_report(run, result, x_eval, x_hat, y_eval, dataset.classes)
    return result
