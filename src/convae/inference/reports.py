"""Pictures and reports of a trained run: PNG files, plots, the evaluation report.

Everything here writes files atomically and computes before it writes, so a
bad input leaves no partial output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convae import checkpoint
from convae.data.preprocess import corrupt
from convae.errors import ConvaeError
from convae.inference.run import Run, as_run, dataset_split, read_images
from convae.parsers import Noise


def to_png(array: np.ndarray, lo: float = 0.0, hi: float = 1.0):
    """A (C, H, W) array as a PIL image, ``lo``..``hi`` mapped to black..white."""
    from PIL import Image

    a = np.clip((array - lo) / max(hi - lo, 1e-12), 0, 1)
    a = (a * 255).round().astype(np.uint8)
    return Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))


def heat_panels(image: np.ndarray, amap: np.ndarray, low: float, top: float) -> list[np.ndarray]:
    """(3, H, W) panels in [0, 1]: the input (C, H, W) in colour, and the anomaly map (H, W) as red over
    its grey, ``low``..``top`` from clear to opaque."""
    grey = image.mean(0) if image.shape[0] == 3 else image[0]
    rgb = np.repeat(grey[None], 3, 0) if image.shape[0] == 1 else image
    alpha = np.clip((amap - low) / max(top - low, 1e-12), 0, 1)[None] * 0.8
    red = np.zeros_like(rgb)
    red[0] = 1.0
    return [rgb, (1 - alpha) * np.repeat(grey[None], 3, 0) + alpha * red]


def mask_panel(mask: np.ndarray) -> np.ndarray:
    """A defect mask (H, W) as a (3, H, W) panel, white where the defect is."""
    return np.repeat((mask > 0)[None].astype(np.float32), 3, 0)


def heat_overlay(image: np.ndarray, amap: np.ndarray, low: float, top: float, mask: np.ndarray | None = None):
    """A PIL image of the input (C, H, W in [0, 1]) | the anomaly map (H, W) as red over it, ``low``..``top``
    from clear to opaque | the defect mask (H, W), white where the defect is, when known."""
    from PIL import Image

    panels = heat_panels(image, amap, low, top) + ([mask_panel(mask)] if mask is not None else [])
    row = [to_png(p) for p in panels]
    canvas = Image.new("RGB", (sum(r.width for r in row) + 2 * (len(row) - 1), row[0].height), (128, 128, 128))
    for k, r in enumerate(row):
        canvas.paste(r, (k * (r.width + 2), 0))
    return canvas


def save_png(path: Path, picture) -> None:
    checkpoint.atomic_write(path, lambda f: picture.save(f, format="PNG"))


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

    run = as_run(run)
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
        shown = clean if corruption is None else corrupt(corruption, clean, 0.0, 1.0, generator)
        out = run.reconstruct(shown.numpy())[0]
        row = [to_png(p) for p in ([shown[0].numpy(), out] if corruption is not None else [out])]
        canvas = Image.new(row[0].mode, (sum(r.width for r in row), row[0].height))
        for k, r in enumerate(row):
            canvas.paste(r, (k * r.width, 0))
        pictures.append(canvas)
    written = []
    with checkpoint.all_or_nothing():  # every picture, or none
        out_dir = checkpoint.make_folder(out_dir)
        for name, picture in zip(names, pictures):
            save_png(out_dir / f"{name}.png", picture)
            written.append(str(out_dir / f"{name}.png"))
    return written


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as the terminal shows it: the model beside PCA."""
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


def write_report(
    run: Run, result: dict, x: np.ndarray, x_hat: np.ndarray, labels: np.ndarray | None, classes: list | None
) -> None:
    """``eval.json``, ``report.md`` and its pictures, in the run directory."""
    run_dir = run.run_dir
    figures = []
    if x.ndim == 4:
        from PIL import Image

        from convae.pictures import make_grid

        n = min(16, len(x))
        lo, hi = float(x.min()), float(x.max())
        both = torch.as_tensor(np.concatenate([x[:n], x_hat[:n]]))
        grid = make_grid(((both - lo) / max(hi - lo, 1e-12)).clamp(0, 1), columns=n)
        image = to_png(grid.numpy())
        image = image.resize((image.width * 3, image.height * 3), Image.Resampling.NEAREST)
        save_png(run_dir / "reconstructions.png", image)
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


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    checkpoint.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


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
        _save_figure(fig, run.run_dir / "loss_curves.png")
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
        _save_figure(fig, run.run_dir / "codes_map.png")
        figures.append(("Codes, projected to 2-D, coloured by label", "codes_map.png"))
    return figures
