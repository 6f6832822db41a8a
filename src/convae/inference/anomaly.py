"""Anomaly scoring of a run's test data: scores, a threshold for flagging, and how well they separate.

The scores and maps come from :mod:`convae.inference.scoring`. The threshold is set on
the run's validation split (normal data) for a chosen false-positive rate and
recorded with the run; with known anomalies (a labelled class, the one-class
protocol, or MVTec AD's defect types and masks) ROC-AUC, precision/recall at
the threshold, and with masks pixel ROC-AUC and AUPRO say how well they work.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convae.checkpoint import all_or_nothing, atomic_write, make_folder, write_json
from convae.config import SCORE_METRICS
from convae.data import Dataset
from convae.errors import ConvaeError
from convae.inference.patches import PATCH, patch_maps, patch_memory, scales_for
from convae.inference.reports import heat_overlay, save_png
from convae.inference.review import Review, write_review
from convae.inference.run import Run, as_run, dataset_split, split_files
from convae.inference.scoring import batch_for, score_batches
from convae.metrics import aupro


def anomaly_scores(run: Run, x: np.ndarray, metric: str = "mse") -> tuple[np.ndarray, np.ndarray]:
    """(per-sample score, per-pixel anomaly map) of reconstructing ``x``; higher means more anomalous.

    The maps are (N, *spatial): the squared residual averaged over channels, smoothed for images
    (:mod:`convae.inference.scoring`, which the exported scorer runs too). ``knn`` scores a sample by the mean
    distance of its code to the :data:`KNN` nearest codes of the run's training samples; ``mse+knn``
    the sum of the two, each standardised by its mean and spread on the run's validation samples.
    ``max+patch`` adds to the ``max`` score and map the raw-pixel patch distances to the training
    images (:mod:`convae.inference.patches`), standardised the same way."""
    if metric not in SCORE_METRICS:
        raise ConvaeError(f"metric must be one of {', '.join(SCORE_METRICS)}, not {metric!r}")
    if len(x) == 0:
        raise ConvaeError("the dataset holds no samples")
    if metric == "max+patch" and (x.ndim != 4 or min(x.shape[2:]) < PATCH):
        raise ConvaeError(f"max+patch scores images of at least {PATCH}x{PATCH} pixels, not samples of {x.shape[1:]}")
    scorer = run.scorer({"max+patch": "max", "knn": "mse", "mse+knn": "mse"}.get(metric, metric))
    scores, maps = score_batches(scorer, torch.as_tensor(x), batch_for(x.shape[1:]), run.device)
    if metric == "max+patch":
        return with_patches(run, x, scores.numpy(), maps.numpy())
    if "knn" not in metric:
        return scores.numpy(), maps.numpy()
    distances = code_distances(run.encode(x).reshape(len(x), -1), training_codes(run))
    if metric == "knn":
        return distances, maps.numpy()
    # Each score in units of its spread on normal data (the validation split), so that neither dominates.
    return standardised_sum([scores.numpy(), distances], validation_stats(run)), maps.numpy()


def spread(values: np.ndarray) -> tuple[float, float]:
    """(mean, standard deviation) of ``values``; a deviation of 0 counts as 1."""
    return float(values.mean()), float(values.std()) or 1.0


def standardised_sum(terms: list[np.ndarray], spreads: list[tuple[float, float]]) -> np.ndarray:
    """The sum of ``terms``, each in units of its :func:`spread` on normal data (``spreads``, in order)."""
    return sum((term - mean) / std for term, (mean, std) in zip(terms, spreads, strict=True))


KNN = 5  # neighbours of a code-distance score
REFERENCE_CODES = 20_000  # training samples whose codes a knn score compares with, at most (evenly spread)


def training_codes(run: Run) -> np.ndarray:
    """The codes of (at most :data:`REFERENCE_CODES` of) the run's training samples, computed once per run."""
    if "training_codes" not in run.memo:
        x, _, _ = dataset_split(run, None, "train", at_most=REFERENCE_CODES)
        run.memo["training_codes"] = run.encode(x).reshape(len(x), -1)
    return run.memo["training_codes"]


def validation_stats(run: Run) -> list[tuple[float, float]]:
    """(mean, standard deviation) of the mse and knn scores of the run's validation samples, computed once."""
    if "validation_stats" not in run.memo:
        x_val, _, _ = dataset_split(run, None, "val")
        parts = (anomaly_scores(run, x_val, m)[0] for m in ("mse", "knn"))
        run.memo["validation_stats"] = [spread(s) for s in parts]
    return run.memo["validation_stats"]


def with_patches(run: Run, x: np.ndarray, scores: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``max`` scores and maps of ``x`` plus its patch distances' peaks and maps at each scale, each
    in units of its spread on the validation split: what resembles a synthetic anomaly and what
    differs from the training images, together (neither alone measured as well on real photographs)."""
    need = PATCH * max(training_patches(run))
    if min(x.shape[2:]) < need:
        raise ConvaeError(
            f"max+patch on this run scores images of at least {need}x{need} pixels, not samples of {x.shape[1:]}"
        )
    stats = patch_stats(run)
    image, pixel = patch_terms(run, x, scores, maps)
    return standardised_sum(image, stats["image"]), standardised_sum(pixel, stats["pixel"]).astype(np.float32)


def patch_terms(
    run: Run, x: np.ndarray, scores: np.ndarray, maps: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``max+patch``'s terms for ``x``: per image, the ``max`` scores and the patch distances' peak at
    each scale; per pixel, the ``max`` maps and the patch distances at each scale."""
    distances = [patch_maps(x, memory, scale=scale) for scale, memory in training_patches(run).items()]
    return [scores, *(d.reshape(len(x), -1).max(1) for d in distances)], [maps, *distances]


PATCH_IMAGES = 2_000  # training images a patch memory is drawn from, at most (evenly spread)


def training_patches(run: Run) -> dict[int, torch.Tensor]:
    """The patch memories, by scale, of (at most :data:`PATCH_IMAGES` of) the run's training images
    (:func:`~convae.inference.patches.patch_memory`) at the scales their size allows; computed once per run."""
    if "training_patches" not in run.memo:
        x, _, _ = dataset_split(run, None, "train", at_most=PATCH_IMAGES)
        run.memo["training_patches"] = {s: patch_memory(x, scale=s) for s in scales_for(min(x.shape[2:]))}
    return run.memo["training_patches"]


def patch_stats(run: Run) -> dict[str, list[tuple[float, float]]]:
    """The :func:`spread` on the validation split of each of :func:`patch_terms`' image terms
    (``image``) and pixel terms (``pixel``); computed once per run, with the validation split's
    ``max+patch`` scores (the threshold's), so that its images are scored once."""
    if "patch_stats" not in run.memo:
        x_val, _, _ = dataset_split(run, None, "val")
        image, pixel = patch_terms(run, x_val, *anomaly_scores(run, x_val, "max"))
        stats = {"image": [spread(t) for t in image], "pixel": [spread(t) for t in pixel]}
        run.memo["patch_stats"] = stats
        run.memo["validation_patch_scores"] = standardised_sum(image, stats["image"])
    return run.memo["patch_stats"]


def code_distances(codes: np.ndarray, reference: np.ndarray, k: int = KNN) -> np.ndarray:
    """Mean Euclidean distance of each code to its ``k`` nearest reference codes."""
    ref = torch.as_tensor(reference, dtype=torch.float32)
    k = min(k, len(ref))
    out = []
    for part in torch.as_tensor(codes, dtype=torch.float32).split(1024):
        exact = torch.cdist(part, ref, compute_mode="donot_use_mm_for_euclid_dist")  # the mm form: 1e-3 off at 0
        out.append(exact.topk(k, largest=False).values.mean(1).double())
    return torch.cat(out).numpy()


def threshold_for(
    run: Run, metric: str, fpr: float, exclude_class: int | None = None, sigmas: float | None = None
) -> tuple[float, str, dict[str, Any]]:
    """(threshold, its key, its record for ``thresholds.json``): the score above which at most ``fpr``
    of the run's validation samples (normal data; those of ``exclude_class`` left out) lie, or with
    ``sigmas`` their mean plus that many standard deviations; warns when too few samples stand behind
    it (:func:`threshold_caveat`). Writes nothing: a command records it
    (:func:`record_threshold`) once everything else it does has succeeded."""
    check_threshold_rule(fpr, sigmas)
    val_scores = validation_scores(run, metric, exclude_class)
    if sigmas is not None:
        threshold, rule = float(val_scores.mean() + sigmas * val_scores.std()), f"mean+{sigmas:g}sd"
    else:  # "higher": at most fpr of the validation samples lie above the threshold.
        threshold, rule = float(np.quantile(val_scores, 1 - fpr, method="higher")), f"fpr={fpr:g}"
    key = f"{metric} {rule}" + (f" without class {exclude_class}" if exclude_class is not None else "")
    caveat = threshold_caveat(len(val_scores), fpr, sigmas)
    if caveat:
        warnings.warn(caveat, stacklevel=3)
    record = {"metric": metric, "rule": rule, "threshold": threshold, "validation_samples": len(val_scores)}
    return threshold, key, record


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def threshold_caveat(validation_samples: int, fpr: float, sigmas: float | None = None) -> str | None:
    """Why a threshold set on ``validation_samples`` normal samples cannot mean what its rule says, or
    None: a false-positive rate of ``fpr`` needs at least ``1 / fpr`` of them to be resolved at all,
    a spread at least two."""
    needed = 2 if sigmas is not None else math.ceil(1 / fpr - 1e-9)
    if validation_samples >= needed:
        return None
    rule = "a spread" if sigmas is not None else f"a {fpr:.0%} false-positive rate"
    return (
        f"the threshold rests on {plural(validation_samples, 'validation sample')}; {rule} needs at least {needed} "
        "(hold out more with --val-fraction when training, or set the threshold on the review page, --report)"
    )


def record_threshold(run: Run, key: str, record: dict[str, Any]) -> None:
    """Add a threshold to the run's ``thresholds.json`` (a read-only run directory is left as it is)."""
    path = Path(run.run_dir) / THRESHOLDS
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
        write_json(path, {**saved, key: record})
    except (ConvaeError, OSError, ValueError):  # a read-only run directory still scores
        pass


THRESHOLDS = "thresholds.json"


def validation_scores(run: Run, metric: str, exclude_class: int | None = None) -> np.ndarray:
    """The scores of the run's validation samples (normal data; those of ``exclude_class`` left out),
    computed once per run and metric: thresholds are set on them, and the review page reads them."""
    key = ("validation_scores", metric, exclude_class)
    if metric == "max+patch" and exclude_class is None:  # scored beside its statistics, in one pass
        patch_stats(run)
        return run.memo["validation_patch_scores"]
    if key not in run.memo:
        x_val, y_val, _ = dataset_split(run, None, "val")
        if exclude_class is not None and y_val is not None:
            x_val = x_val[y_val != exclude_class]
        run.memo[key] = anomaly_scores(run, x_val, metric)[0]
    return run.memo[key]


def check_threshold_rule(fpr: float, sigmas: float | None) -> None:
    if not 0 < fpr < 1:
        raise ConvaeError(f"fpr must be in (0, 1), not {fpr}")
    if sigmas is not None and not np.isfinite(sigmas):
        raise ConvaeError(f"sigmas must be a finite number, not {sigmas}")


def default_metric(dataset: Dataset, run: Run | None = None) -> str:
    """The image score that measured best for the job: the map's max for data with defect masks or a
    run with a segmenter (whose map is the score); for a one-class run (``normal_class``), the
    reconstruction error and the codes' distances together (``mse+knn``: 0.929 mean ROC-AUC on
    Fashion-MNIST against 0.908 by ``mse``, benchmarks/RESULTS.md); else the mean squared error."""
    if dataset.masks is not None or (run is not None and run.segmenter is not None):
        return "max"
    if run is not None and run.config.normal_class is not None and run.config.crop is None:
        return "mse+knn"
    return "mse"


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
    sigmas: float | None = None,
    report: str | Path | None = None,
) -> dict[str, Any]:
    """Anomaly scores on the test split, a threshold at ``fpr`` on the run's validation split, and
    ROC-AUC (``roc_auc``, also ``image_auroc``) and precision/recall at that threshold when it is
    known which samples are anomalies: those of ``anomaly_class``, or, for a run trained on one
    class (``normal_class``, the one-class protocol), all the others; with defect masks (``mvtec:``),
    pixel ROC-AUC and AUPRO too, overall and per type. With ``sigmas`` the threshold is the validation
    scores' mean plus that many standard deviations instead. It is recorded in the run's
    ``thresholds.json``; ``maps_dir`` receives heat-map overlays of the ``maps`` highest scores, and
    ``report`` the review page (:mod:`convae.inference.review`), written only once all else succeeded."""
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    check_threshold_rule(fpr, sigmas)
    run = as_run(run)
    x, y, scored = dataset_split(run, data, "test")
    masks = scored.masks if scored.masks is not None and len(scored.masks) == len(x) else None
    metric = metric or default_metric(scored, run)
    if anomaly_class is not None:
        if y is None:
            raise ConvaeError("--anomaly-class needs a labelled dataset")
        if not (y == anomaly_class).any():
            raise ConvaeError(f"class {anomaly_class} does not occur in the scored data")
        if (y == anomaly_class).all():
            raise ConvaeError(f"every scored sample is of class {anomaly_class}: ROC-AUC needs normal samples too")
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
    threshold, key, record = threshold_for(run, metric, fpr, anomaly_class, sigmas)  # on normal data only
    scores, amaps = anomaly_scores(run, x, metric)
    flagged = scores > threshold
    result: dict[str, Any] = {
        "metric": metric,
        "threshold": threshold,
        **({"sigmas": sigmas} if sigmas is not None else {"fpr_target": fpr}),
        "samples": len(x),
        "validation_samples": record["validation_samples"],
        "flagged": int(flagged.sum()),
        "scores": scores,
        "labels": y,
        "files": split_files(run, data, "test", scored),
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
        result.update(pixel_metrics(amaps, masks[:, 0], scores, y, scored.classes))
    if report is not None and x.ndim != 4:
        raise ConvaeError("--report shows images (N, C, H, W); this data is not 2-D images")
    with all_or_nothing():  # the maps, the page and the threshold, or none of them
        if maps_dir is not None and x.ndim == 4:
            top = threshold if metric == "max" else None
            write_maps(maps_dir, x, amaps, scores, masks, result["files"], top, maps)
        if report is not None:
            write_review(report, _review(run, data, x, y, scored, masks, amaps, result, anomaly_class, fpr, sigmas))
        record_threshold(run, key, record)  # the run changes only once the command has succeeded
    return result


def _review(run, data, x, y, scored, masks, amaps, result, anomaly_class, fpr, sigmas) -> Review:
    """What the review page shows of a scored test split."""
    types = None
    if y is not None and scored.classes and masks is not None:
        types = [scored.classes[int(k)] for k in y]
    elif y is not None and "normal_class" in result:
        types = ["good" if int(k) == result["normal_class"] else f"class {int(k)}" for k in y]
    elif y is not None and anomaly_class is not None:
        types = ["good" if int(k) != anomaly_class else f"class {int(k)}" for k in y]
    rule = f"mean + {sigmas:g} sd of" if sigmas is not None else f"{fpr:.0%} false positives on"
    validated = plural(result["validation_samples"], "normal validation image")
    facts = {
        "data": f"{data or run.config.data} (test split, {len(x)} images)",
        "run": str(run.run_dir),
        "score": result["metric"],
        "threshold": f"{result['threshold']:.6g} ({rule} the run's {validated})",
        "flagged": f"{result['flagged']} of {result['samples']}",
    }
    summary = {k: v for k, v in result.items() if k in ("metric", "image_auroc", "pixel_auroc", "aupro", "per_type")}
    return Review(
        title=f"convae review: {Path(run.run_dir).name}",
        x=x,
        reconstructions=run.reconstruct(x),
        maps=amaps,
        scores=result["scores"],
        threshold=result["threshold"],
        validation_scores=validation_scores(run, result["metric"], anomaly_class),
        summary=summary,
        types=types,
        masks=None if masks is None else masks[:, 0],
        files=result["files"],
        facts=facts,
    )


def write_maps(
    folder: str | Path,
    x: np.ndarray,
    maps: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    files: list[str] | None,
    top: float | None,
    count: int,
) -> None:
    """Heat-map overlays of the ``count`` highest-scoring images, named by rank and file: input |
    map over it (clear at the median pixel of the maps shown, which is normal texture; opaque at
    ``top``, the threshold of a max score, else the highest map value shown) | mask. Computed
    first, then written."""
    order = np.argsort(-scores, kind="stable")[:count]
    low = float(np.median(maps[order]))
    top = max(top if top is not None else float(maps[order].max()), low)
    pictures = []
    for rank, i in enumerate(order):
        name = f"{i:05d}" if files is None else f"{Path(files[i]).parent.name}_{Path(files[i]).stem}"
        mask = None if masks is None else masks[i, 0]
        pictures.append((f"{rank + 1:03d}_{name}.png", heat_overlay(x[i], maps[i], low, top, mask)))
    folder = make_folder(folder)
    for name, picture in pictures:
        save_png(folder / name, picture)


def write_outputs(
    result: dict[str, Any], csv_path: str | Path | None = None, summary_path: str | Path | None = None
) -> None:
    """``score``'s outputs, all or none: the per-sample CSV (index, score, flagged, label, file) and the
    summary JSON. Pops ``scores``, ``labels`` and ``files`` from ``result``, leaving the summary."""
    scores, labels, files = result.pop("scores"), result.pop("labels"), result.pop("files")
    written = []
    if csv_path:
        text = io.StringIO()
        writer = csv.writer(text)
        extra = (["label"] if labels is not None else []) + (["file"] if files is not None else [])
        writer.writerow(["index", "score", "flagged", *extra])
        for i, value in enumerate(scores):
            row = [i, f"{value:.6g}", int(value > result["threshold"])]
            row += ([int(labels[i])] if labels is not None else []) + ([files[i]] if files is not None else [])
            writer.writerow(row)
        atomic_write(csv_path, lambda f: f.write(text.getvalue().encode()))
        written.append(Path(csv_path))
    if summary_path:
        try:
            write_json(summary_path, result)
        except ConvaeError:
            for path in written:
                path.unlink(missing_ok=True)
            raise
