"""Anomaly scoring: how badly a trained run reconstructs each sample, and a threshold for flagging.

The threshold is set on the run's validation split (normal data) for a chosen
false-positive rate; with a labelled anomalous class, ROC-AUC and
precision/recall at that threshold say how well the score separates it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from convae.checkpoint import make_folder
from convae.errors import ConvaeError
from convae.metrics import aupro, per_sample_l1, per_sample_mse, per_sample_ssim
from convae.reports import save_png, to_png
from convae.run import Run, as_run, dataset_split

SCORE_METRICS = ("mse", "l1", "ssim", "max")  # max: the highest value of the smoothed residual map


def anomaly_scores(run: Run, x: np.ndarray, metric: str = "mse") -> tuple[np.ndarray, np.ndarray]:
    """(per-sample score, per-pixel squared error) of reconstructing ``x``; higher means more anomalous."""
    if metric not in SCORE_METRICS:
        raise ConvaeError(f"metric must be one of {', '.join(SCORE_METRICS)}, not {metric!r}")
    if len(x) == 0:
        raise ConvaeError("the dataset holds no samples")
    x_hat = run.reconstruct(x)
    err = (x_hat - x) ** 2
    if metric == "mse":
        scores = per_sample_mse(x, x_hat)
    elif metric == "l1":
        scores = per_sample_l1(x, x_hat)
    else:
        if x.ndim != 4:
            raise ConvaeError(f"the {metric} score needs 2-D images")
        if metric == "max":  # a defect is local: its peak stands out where the image's mean does not
            scores = pixel_maps(err).reshape(len(x), -1).max(1)
        else:
            scores = 1 - per_sample_ssim(x, x_hat, float(x.max() - x.min()) or 1.0)
    return scores.astype(np.float64), err


SMOOTHING = 4.0  # pixels: the Gaussian that smooths a residual map before it is scored


def pixel_maps(err: np.ndarray, sigma: float = SMOOTHING) -> np.ndarray:
    """Per-pixel anomaly maps (N, H, W): the squared residual, averaged over channels, smoothed by a
    Gaussian of ``sigma`` pixels (single-pixel noise in the reconstruction is not a defect)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(err.mean(1), sigma=(0, sigma, sigma), mode="nearest")


def pixel_metrics(
    maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, y: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Pixel ROC-AUC and AUPRO (up to 30 % FPR) of maps against masks, overall and per defect type
    (each type's images with the normal ones); image ROC-AUC per type from the maps' scores."""
    from sklearn.metrics import roc_auc_score

    def measured(keep: np.ndarray) -> dict[str, float]:
        return {
            "pixel_auroc": float(roc_auc_score(masks[keep].ravel() > 0, maps[keep].ravel())),
            "aupro": aupro(masks[keep], maps[keep]),
        }

    out: dict[str, Any] = measured(np.ones(len(y), bool))
    out["per_type"] = {}
    for k in range(1, len(classes)):
        keep = (y == 0) | (y == k)
        if (y == k).any() and (y == 0).any():
            image = float(roc_auc_score(y[keep] == k, scores[keep]))
            out["per_type"][classes[k]] = {"image_auroc": image, **measured(keep)}
    return out


def score(
    run: str | Path | Run,
    data: str | None = None,
    *,
    metric: str | None = None,
    fpr: float = 0.05,
    anomaly_class: int | None = None,
    maps_dir: str | Path | None = None,
    maps: int = 32,
) -> dict[str, Any]:
    """Anomaly scores on the test split, a threshold at ``fpr`` on the run's validation split, and
    ROC-AUC (``roc_auc``, also ``image_auroc``) and precision/recall at that threshold when it is
    known which samples are anomalies: those of ``anomaly_class``, or, for a run trained on one
    class (``normal_class``, the one-class protocol), all the others."""
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    if not 0 < fpr < 1:
        raise ConvaeError(f"fpr must be in (0, 1), not {fpr}")
    run = as_run(run)
    x_val, y_val, own = dataset_split(run, None, "val")
    x, y, scored = dataset_split(run, data, "test", None if data not in (None, run.config.data) else own)
    masks = scored.masks if scored.masks is not None and len(scored.masks) == len(x) else None
    metric = metric or ("max" if masks is not None else "mse")
    if anomaly_class is not None:
        if y is None:
            raise ConvaeError("--anomaly-class needs a labelled dataset")
        if not (y == anomaly_class).any():
            raise ConvaeError(f"class {anomaly_class} does not occur in the scored data")
        if (y == anomaly_class).all():
            raise ConvaeError(f"every scored sample is of class {anomaly_class}: ROC-AUC needs normal samples too")
        if y_val is not None:
            x_val = x_val[y_val != anomaly_class]  # the threshold is set on normal data only
        truth, described = y == anomaly_class, {"anomaly_class": int(anomaly_class)}
    elif masks is not None:  # MVTec AD's layout: label 0 is good, the others defect types
        truth, described = y != 0, {"normal": scored.classes[0]}
        if truth.all() or not truth.any():
            raise ConvaeError(f"{scored.name}: the test split needs good and defective images for ROC-AUC")
    elif run.config.normal_class is not None and y is not None:
        normal = run.config.normal_class
        if (y == normal).all() or not (y == normal).any():
            raise ConvaeError(f"the scored data needs samples of class {normal} and of others for ROC-AUC")
        truth, described = y != normal, {"normal_class": int(normal)}
    else:
        truth = None
    val_scores, _ = anomaly_scores(run, x_val, metric)
    # "higher": at most fpr of the validation samples lie above the threshold.
    threshold = float(np.quantile(val_scores, 1 - fpr, method="higher"))
    scores, err = anomaly_scores(run, x, metric)
    flagged = scores > threshold
    result: dict[str, Any] = {
        "metric": metric,
        "threshold": threshold,
        "fpr_target": fpr,
        "samples": len(x),
        "flagged": int(flagged.sum()),
        "scores": scores,
        "labels": y,
    }
    if truth is not None:
        auroc = float(roc_auc_score(truth, scores))
        result.update(
            **described,
            roc_auc=auroc,
            image_auroc=auroc,
            precision=float(precision_score(truth, flagged, zero_division=0)),
            recall=float(recall_score(truth, flagged, zero_division=0)),
            false_positive_rate=float(flagged[~truth].mean()),
        )
    if masks is not None:
        result.update(pixel_metrics(pixel_maps(err), masks[:, 0], scores, y, scored.classes))
    if maps_dir is not None and x.ndim == 4:
        maps_dir = make_folder(maps_dir)
        top = float(err.max()) or 1.0
        for i in np.argsort(-scores)[:maps]:
            save_png(maps_dir / f"{i:05d}.png", to_png(err[i].mean(0, keepdims=True), 0.0, top))
    return result
