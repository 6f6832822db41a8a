"""Using a trained run: evaluate against PCA, encode, reconstruct, score anomalies.

Every function takes a run directory (or a :class:`Run`) and returns plain data
(dicts, NumPy arrays), so notebooks get what the command line prints.
Metrics are in the data's original scale: the preprocessing is inverted first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from convae import checkpoint
from convae import data as datasets
from convae.data import Dataset, split_validation
from convae.errors import ConvaeError
from convae.model import AutoEncoder
from convae.preprocess import Noise, Normalizer
from convae.train import TrainConfig, load_run, psnr


@dataclass
class Run:
    """A trained model with its preprocessing: ``encode``/``decode`` take and give raw data."""

    model: AutoEncoder
    normalizer: Normalizer
    config: TrainConfig
    run_dir: Path
    device: torch.device

    @torch.no_grad()
    def encode(self, x: np.ndarray | Tensor, batch_size: int = 1024) -> np.ndarray:
        return np.concatenate([self.model.encode(b).cpu().numpy() for b in self._batches(x, batch_size)])

    @torch.no_grad()
    def decode(self, z: np.ndarray | Tensor, batch_size: int = 1024) -> np.ndarray:
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32)
        out = [self.normalizer.inverse(self.model.decode(b.to(self.device))).cpu().numpy() for b in z.split(batch_size)]
        return np.concatenate(out)

    @torch.no_grad()
    def reconstruct(self, x: np.ndarray | Tensor, batch_size: int = 1024) -> np.ndarray:
        out = [self.normalizer.inverse(self.model(b)).cpu().numpy() for b in self._batches(x, batch_size)]
        return np.concatenate(out)

    def _batches(self, x: np.ndarray | Tensor, batch_size: int) -> Iterator[Tensor]:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        expected = self.model.input_shape
        if x.dim() != len(expected) + 1 or x.shape[1] != expected[0]:
            raise ConvaeError(f"expected inputs shaped (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if len(x) == 0:
            raise ConvaeError("no samples to process")
        for batch in x.split(batch_size):
            yield self.normalizer.transform(batch.to(self.device))


def load(run_dir: str | Path, which: str = "best", device: str = "cpu") -> Run:
    """Load a trained run: the model (eval mode) with its preprocessing."""
    model, normalizer, config = load_run(run_dir, which, device)
    return Run(model.to(device), normalizer, config, Path(run_dir), torch.device(device))


def _as_run(run: str | Path | Run) -> Run:
    return run if isinstance(run, Run) else load(run)


def eval_splits(
    run: Run, data: str | None = None
) -> tuple[Dataset, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(dataset, x_fit, x_eval, y_fit, y_eval): the run's training split and the test split.

    Without a test split, the run's validation split (same seed) is evaluated.
    With ``data``, that dataset's test split (or all of it) is evaluated and its
    training split (or all of it) is what PCA and the probe fit on.
    """
    cfg = run.config
    dataset = load_dataset(data or cfg.data, cfg)
    train_idx, val_idx = split_validation(len(dataset.x_train), cfg.val_fraction, cfg.seed)
    y = dataset.y_train
    if dataset.x_test is not None:
        return dataset, dataset.x_train[train_idx], dataset.x_test, _take(y, train_idx), dataset.y_test
    if data is not None and data != cfg.data:
        return dataset, dataset.x_train, dataset.x_train, y, y
    if len(val_idx) == 0:
        raise ConvaeError(f"{cfg.data} has no test split and the run kept no validation split")
    return dataset, dataset.x_train[train_idx], dataset.x_train[val_idx], _take(y, train_idx), _take(y, val_idx)


def _take(y: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    return None if y is None else y[idx]


def fit_subset(x: np.ndarray, y: np.ndarray | None, max_fit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """At most ``max_fit`` of the samples PCA and the probe fit on: a random subset, the same for every call."""
    if len(x) <= max_fit:
        return x, y
    keep = np.sort(np.random.default_rng(0).choice(len(x), max_fit, replace=False))
    return x[keep], _take(y, keep)


def load_dataset(source: str, cfg: TrainConfig) -> Dataset:
    """A dataset as the run saw it: same loading options, the same classes left out of training."""
    dataset = datasets.load(source, data_dir=cfg.data_dir, channels=cfg.channels, image_size=cfg.image_size)
    return datasets.drop_classes(dataset, cfg.exclude_classes) if source == cfg.data else dataset


def ssim(a: Tensor, b: Tensor, data_range: float, window: int = 7) -> Tensor:
    """Mean structural similarity per sample (Wang et al. 2004) with a Gaussian window, 2-D images.

    Uses sigma 1.5 and the usual constants K1 = 0.01, K2 = 0.03; windows are
    shrunk for images smaller than ``window``.
    """
    window = min(window, a.shape[-1], a.shape[-2])
    if window % 2 == 0:
        window -= 1
    coords = torch.arange(window, dtype=torch.float64) - window // 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = (g / g.sum()).to(a.dtype)
    c = a.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, kernel, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def reconstruction_metrics(
    x: np.ndarray, x_hat: np.ndarray, data_range: float, labels: np.ndarray | None = None, classes: list | None = None
) -> dict[str, Any]:
    err = ((x_hat.astype(np.float64) - x) ** 2).reshape(len(x), -1).mean(1)
    mse = float(err.mean())
    out: dict[str, Any] = {"mse": mse, "psnr": psnr(mse, data_range)}
    if x.ndim == 4:
        values = [ssim(torch.as_tensor(a), torch.as_tensor(b), data_range) for a, b in _chunks(x, x_hat)]
        out["ssim"] = float(torch.cat(values).mean())
    if labels is not None:
        names = classes or [str(k) for k in range(int(labels.max()) + 1)]
        out["mse_per_class"] = {
            str(names[k]) if k < len(names) else str(k): float(err[labels == k].mean()) for k in np.unique(labels)
        }
    return out


def _chunks(a: np.ndarray, b: np.ndarray, size: int = 2048):
    for i in range(0, len(a), size):
        yield a[i : i + size].astype(np.float32), b[i : i + size].astype(np.float32)


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


PROBE_MAX_CODE = 2048


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

    run = _as_run(run)
    dataset, x_fit, x_eval, y_fit, y_eval = eval_splits(run, data)
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
        noisy = noise.apply(torch.as_tensor(x_eval), lo, hi, torch.Generator().manual_seed(0)).numpy()
        model_metrics["denoised_mse"] = float(((run.reconstruct(noisy) - x_eval) ** 2).mean())
        model_metrics["noisy_input_mse"] = float(((noisy - x_eval) ** 2).mean())

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
        "split": "test" if dataset.x_test is not None else "validation",
        "samples": len(x_eval),
        "code_size": code_size,
        "model": model_metrics,
        f"pca_{n_components}": pca_metrics,
    }
    if write:
        _write_report(run, result, x_eval, x_hat, y_eval, dataset.classes)
    return result


def format_table(result: dict[str, Any]) -> str:
    pca_key = next(k for k in result if k.startswith("pca_"))
    names = [("mse", "MSE", "{:.5f}"), ("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.4f}")]
    names.append(("probe_accuracy", "linear probe", "{:.3f}"))
    names += [("denoised_mse", "denoised MSE", "{:.5f}"), ("noisy_input_mse", "noisy input MSE", "{:.5f}")]
    header = f"{'':<14}{'convae':>12}{pca_key.replace('_', '-').upper():>12}"
    lines = [f"{result['data']} ({result['split']}, {result['samples']} samples, code {result['code_size']})", header]
    for key, label, fmt in names:
        if key in result["model"]:
            ours = fmt.format(result["model"][key])
            theirs = fmt.format(result[pca_key][key]) if key in result[pca_key] else "-"
            lines.append(f"{label:<14}{ours:>12}{theirs:>12}")
    return "\n".join(lines)


def _write_report(
    run: Run, result: dict, x: np.ndarray, x_hat: np.ndarray, labels: np.ndarray | None, classes: list | None
) -> None:
    run_dir = run.run_dir
    figures = []
    if x.ndim == 4:
        from PIL import Image

        from convae.summaries import make_grid

        n = min(16, len(x))
        lo, hi = float(x.min()), float(x.max())
        both = torch.as_tensor(np.concatenate([x[:n], x_hat[:n]]))
        grid = make_grid(((both - lo) / max(hi - lo, 1e-12)).clamp(0, 1), columns=n)
        array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        image = image.resize((image.width * 3, image.height * 3), Image.Resampling.NEAREST)
        checkpoint.atomic_write(run_dir / "reconstructions.png", lambda f: image.save(f, format="PNG"))
        figures.append(("Originals (top) and reconstructions (bottom)", "reconstructions.png"))
    figures += _plots(run, x, labels, classes)
    checkpoint.write_json(run_dir / "eval.json", result)
    text = ["# Evaluation", "", "```", format_table(result), "```", ""]
    if "mse_per_class" in result["model"]:
        pca_key = next(k for k in result if k.startswith("pca_"))
        text += ["| class | convae MSE | PCA MSE |", "|---|---|---|"]
        for name, value in result["model"]["mse_per_class"].items():
            text.append(f"| {name} | {value:.5f} | {result[pca_key]['mse_per_class'][name]:.5f} |")
        text.append("")
    for caption, path in figures:
        text += [f"![{caption}]({path})", ""]
    checkpoint.atomic_write(run_dir / "report.md", lambda f: f.write("\n".join(text).encode()))


def _plots(run: Run, x: np.ndarray, labels: np.ndarray | None, classes: list | None) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    metrics_path = run.run_dir / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        fig, ax = plt.subplots(figsize=(5, 3.5))
        epochs = [m["epoch"] for m in metrics]
        ax.plot(epochs, [m["train_loss"] for m in metrics], label="train")
        ax.plot(epochs, [m["val_loss"] for m in metrics], label="validation")
        ax.set(xlabel="epoch", ylabel=f"{run.config.loss} loss", yscale="log")
        ax.legend()
        fig.tight_layout()
        checkpoint.atomic_write(run.run_dir / "loss_curves.png", lambda f: fig.savefig(f, format="png", dpi=100))
        plt.close(fig)
        figures.append(("Loss curves", "loss_curves.png"))
    codes = run.encode(x[:2000]).reshape(min(len(x), 2000), -1)
    if codes.shape[1] >= 2:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=0).fit_transform(codes)
        fig, ax = plt.subplots(figsize=(5, 4.5))
        if labels is not None:
            scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels[: len(xy)], cmap="tab10", s=4)
            handles, _ = scatter.legend_elements()
            names = classes or [str(k) for k in np.unique(labels)]
            ax.legend(handles, names[: len(handles)], fontsize=6, markerscale=0.8, loc="best")
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=4)
        ax.set(title="codes (2-D PCA)", xticks=[], yticks=[])
        fig.tight_layout()
        checkpoint.atomic_write(run.run_dir / "codes_map.png", lambda f: fig.savefig(f, format="png", dpi=100))
        plt.close(fig)
        figures.append(("Codes, projected to 2-D, coloured by label", "codes_map.png"))
    return figures


# ----------------------------------------------------------------------------- encode / reconstruct / score


def dataset_split(
    run: Run, data: str | None, split: str, dataset: Dataset | None = None
) -> tuple[np.ndarray, np.ndarray | None, Dataset]:
    """Samples and labels of a split: ``test`` (or all data when there is none), ``val`` or ``train``.

    ``dataset``, when given, is ``data`` (or the run's data) already loaded.
    """
    cfg = run.config
    dataset = dataset or load_dataset(data or cfg.data, cfg)
    if split == "test" and dataset.x_test is not None:
        return dataset.x_test, dataset.y_test, dataset
    if split in ("val", "train") and (data is None or data == cfg.data):
        train_idx, val_idx = split_validation(len(dataset.x_train), cfg.val_fraction, cfg.seed)
        idx = val_idx if split == "val" else train_idx
        if split == "val" and len(idx) == 0:
            raise ConvaeError(f"the run kept no validation split of {cfg.data}")
        return dataset.x_train[idx], _take(dataset.y_train, idx), dataset
    if split not in ("test", "val", "train", "all"):
        raise ConvaeError(f"split must be test, val, train or all, not {split!r}")
    return dataset.x_train, dataset.y_train, dataset


def encode_dataset(run: str | Path | Run, data: str | None = None, split: str = "all", progress: bool = False):
    """Codes of every sample of a split (``all``: the whole training file), with labels when known."""
    run = _as_run(run)
    x, y, _ = dataset_split(run, data, split)
    batches = range(0, len(x), 1024)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, unit="batch", disable=None)
    codes = np.concatenate([run.encode(x[i : i + 1024]) for i in batches])
    return codes, y


def read_images(run: Run, paths: list[str]) -> list[np.ndarray]:
    """Image files as (N, C, H, W) in [0, 1], checked against the model's channels and size."""
    from PIL import Image, UnidentifiedImageError

    channels = run.model.input_shape[0]
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as img:
                mode_channels = 1 if img.mode in ("L", "1", "I", "I;16", "F") else 3
                if mode_channels != channels:
                    raise ConvaeError(f"{path}: has {mode_channels} channel(s), the model takes {channels}")
                a = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
            raise ConvaeError(f"{path}: cannot read image ({err})") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if run.model.has_dense and a.shape[1:] != tuple(run.model.input_shape[1:]):
            h, w = run.model.input_shape[1:]
            raise ConvaeError(f"{path}: is {a.shape[2]}x{a.shape[1]} pixels, the model takes {w}x{h}")
        arrays.append(a.astype(np.float32) / 255.0)
    if not arrays:
        raise ConvaeError("no input images given")
    return arrays


def _to_png(array: np.ndarray, lo: float = 0.0, hi: float = 1.0):
    from PIL import Image

    a = np.clip((array - lo) / max(hi - lo, 1e-12), 0, 1)
    a = (a * 255).round().astype(np.uint8)
    return Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))


def reconstruct(
    run: str | Path | Run,
    out_dir: str | Path,
    *,
    inputs: list[str] | None = None,
    data: str | None = None,
    limit: int = 64,
    noise: str | None = None,
    seed: int = 0,
) -> list[str]:
    """Reconstructions as PNG files (input size and channels); with ``noise`` each file is noisy | clean output.

    Everything is computed first and written at the end, so a bad input leaves no partial output folder.
    """
    from PIL import Image

    run = _as_run(run)
    if inputs:
        images, names = read_images(run, inputs), [Path(p).stem for p in inputs]
    else:
        x, _, _ = dataset_split(run, data, "test")
        images, names = list(x[:limit]), [f"{i:05d}" for i in range(min(limit, len(x)))]
    if not images:
        raise ConvaeError("the dataset holds no samples")
    corruption = Noise.parse(noise)
    generator = torch.Generator().manual_seed(seed)
    pictures = []
    for image in images:
        clean = torch.as_tensor(image)[None]
        shown = clean
        if corruption is not None:
            shown = corruption.apply(clean, 0.0, 1.0, generator)
        out = run.reconstruct(shown.numpy())[0]
        parts = [shown[0].numpy(), out] if corruption is not None else [out]
        row = [_to_png(p) for p in parts]
        canvas = Image.new(row[0].mode, (sum(r.width for r in row), row[0].height))
        for k, r in enumerate(row):
            canvas.paste(r, (k * r.width, 0))
        pictures.append(canvas)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, picture in zip(names, pictures):
        path = out_dir / f"{name}.png"
        checkpoint.atomic_write(path, lambda f, p=picture: p.save(f, format="PNG"))
        written.append(str(path))
    return written


SCORE_METRICS = ("mse", "l1", "ssim")


def anomaly_scores(run: Run, x: np.ndarray, metric: str = "mse") -> tuple[np.ndarray, np.ndarray]:
    """(per-sample score, per-pixel squared error) of reconstructing ``x``; higher means more anomalous."""
    if metric not in SCORE_METRICS:
        raise ConvaeError(f"metric must be one of {', '.join(SCORE_METRICS)}, not {metric!r}")
    if len(x) == 0:
        raise ConvaeError("the dataset holds no samples")
    x_hat = run.reconstruct(x)
    err = (x_hat - x) ** 2
    if metric == "mse":
        scores = err.reshape(len(x), -1).mean(1)
    elif metric == "l1":
        scores = np.abs(x_hat - x).reshape(len(x), -1).mean(1)
    else:
        if x.ndim != 4:
            raise ConvaeError("the ssim score needs 2-D images")
        rng = float(x.max() - x.min()) or 1.0
        chunks = [ssim(torch.as_tensor(a), torch.as_tensor(b), rng).numpy() for a, b in _chunks(x, x_hat)]
        scores = 1 - np.concatenate(chunks)
    return scores.astype(np.float64), err


def score(
    run: str | Path | Run,
    data: str | None = None,
    *,
    metric: str = "mse",
    fpr: float = 0.05,
    anomaly_class: int | None = None,
    maps_dir: str | Path | None = None,
    maps: int = 32,
) -> dict[str, Any]:
    """Anomaly scores on the test split, a threshold at ``fpr`` on the run's validation split, and
    (with ``anomaly_class``) ROC-AUC and precision/recall at that threshold."""
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    if not 0 < fpr < 1:
        raise ConvaeError(f"fpr must be in (0, 1), not {fpr}")
    run = _as_run(run)
    x_val, y_val, own = dataset_split(run, None, "val")
    x, y, _ = dataset_split(run, data, "test", None if data not in (None, run.config.data) else own)
    if anomaly_class is not None:
        if y is None:
            raise ConvaeError("--anomaly-class needs a labelled dataset")
        if not (y == anomaly_class).any():
            raise ConvaeError(f"class {anomaly_class} does not occur in the scored data")
        if y_val is not None:
            x_val = x_val[y_val != anomaly_class]  # the threshold is set on normal data only
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
    if anomaly_class is not None:
        truth = y == anomaly_class
        result.update(
            anomaly_class=int(anomaly_class),
            roc_auc=float(roc_auc_score(truth, scores)),
            precision=float(precision_score(truth, flagged, zero_division=0)),
            recall=float(recall_score(truth, flagged, zero_division=0)),
            false_positive_rate=float(flagged[~truth].mean()),
        )
    if maps_dir is not None and x.ndim == 4:
        maps_dir = Path(maps_dir)
        maps_dir.mkdir(parents=True, exist_ok=True)
        top = float(err.max()) or 1.0
        for i in np.argsort(-scores)[:maps]:
            picture = _to_png(err[i].mean(0, keepdims=True), 0.0, top)
            checkpoint.atomic_write(maps_dir / f"{i:05d}.png", lambda f, p=picture: p.save(f, format="PNG"))
    return result
