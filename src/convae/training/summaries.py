"""TensorBoard summaries for a training run (event files via the tensorboard package's writer).

Images (2 spatial dims) get image grids and projector thumbnails, volumes (3)
grids of their middle slices, signals (1) line plots of input and reconstruction;
everything else is written for every kind of data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from convae.data import Dataset
from convae.pictures import make_grid
from convae.runtime import eval_mode
from convae.training.batches import BatchPipeline


class Summaries:
    """The run's TensorBoard writer; a no-op when ``enabled`` is false (e.g. ranks other than 0)."""

    def __init__(self, log_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.log_dir = log_dir
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=log_dir)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def image_grids(self, grids: dict[str, Tensor], step: int) -> None:
        """``grids``: tag -> (N, C, H, W) batch in [0, 1]; non-image data is skipped."""
        if self.writer:
            for tag, batch in grids.items():
                if batch.dim() == 4:
                    self.writer.add_image(tag, make_grid(batch), step)

    def signals(self, curves: dict[str, Tensor], step: int, count: int = 4) -> None:
        """1-D samples (N, C, L): the first ``count`` as line plots (channel 0), one panel each."""
        if not self.writer:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = min(count, len(next(iter(curves.values()))))
        fig, axes = plt.subplots(n, 1, figsize=(6, 1.6 * n), sharex=True, squeeze=False)
        for i, ax in enumerate(axes[:, 0]):
            for label, batch in curves.items():
                ax.plot(batch[i, 0].detach().float().cpu().numpy(), label=label, linewidth=1)
        axes[0, 0].legend(fontsize=6, loc="upper right")
        fig.tight_layout()
        self.writer.add_figure("signals", fig, step)  # closes the figure

    def histograms(self, model: nn.Module, activations: dict[str, Tensor], step: int) -> None:
        if not self.writer:
            return
        for name, param in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
            if param.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", param.grad.detach().float().cpu(), step)
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                self.writer.add_histogram(f"batchnorm/{name}", buffer.detach().float().cpu(), step)
        for name, value in activations.items():
            self.writer.add_histogram(f"activations/{name}", value.detach().float().cpu(), step)

    def graph(self, model: nn.Module, example: Tensor) -> None:
        if self.writer:
            import warnings

            with warnings.catch_warnings():
                # Tracing warns about sizes it records as constants: fine for a picture of the graph.
                warnings.simplefilter("ignore")
                self.writer.add_graph(model, example, use_strict_trace=False)

    def embedding(self, codes: Tensor, labels: Sequence[Any] | None, thumbnails: Tensor | None, step: int) -> None:
        if not self.writer:
            return
        thumbs = None
        if thumbnails is not None and thumbnails.dim() == 4:
            thumbs = thumbnails.detach().float().cpu().clamp(0, 1)
        self.writer.add_embedding(
            codes.detach().float().cpu().flatten(1),
            metadata=list(labels) if labels is not None else None,
            label_img=thumbs,
            global_step=step,
            tag="codes",
        )

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.writer:
            clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
            self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        if self.writer:
            self.writer.close()


GRAPH_MAX_BLOCKS = 100


class TrainingPictures:
    """What a trainer shows TensorBoard besides scalars: the graph, image grids of validation
    samples and their reconstructions, activations for the histograms, the codes in the projector.

    Every batch comes through the run's :class:`~convae.training.batches.BatchPipeline`, so the
    pictures show what the network sees; ``rows`` gives raw samples by index, ``step`` the step to
    file them under.
    """

    def __init__(
        self,
        summaries: Summaries,
        model: nn.Module,
        pipeline: BatchPipeline,
        rows: Callable[[Tensor], Tensor],
        dataset: Dataset,
        step: Callable[[], int],
        segmenter: nn.Module | None = None,
    ):
        self.summaries, self.model, self.pipeline, self.rows = summaries, model, pipeline, rows
        self.dataset, self.step, self.segmenter = dataset, step, segmenter

    def graph(self, idx: Tensor) -> bool:
        """The model's graph, traced on the samples ``idx``; skipped (False) for very deep models, whose
        trace takes minutes while it tells little."""
        if len(self.model.encoder) > GRAPH_MAX_BLOCKS:
            return False
        batch = self.pipeline(self.rows(idx))
        with eval_mode(self.model):
            self.summaries.graph(self.model, batch.input)
        return True

    @torch.no_grad()
    def images(self, idx: Tensor) -> None:
        """Inputs and reconstructions of the samples ``idx`` (centred patches, the same corruption each time)."""
        raw = self.rows(idx)
        batch = self.pipeline(raw, torch.Generator(device=raw.device).manual_seed(0), centred=True)
        with eval_mode(self.model):
            out = self.model(batch.input)
        norm, raw = self.pipeline.normalizer, batch.raw
        shown = {"input": raw, "reconstruction": norm.inverse(out.float())}
        if self.pipeline.noise is not None:
            shown["noisy_input"] = norm.inverse(batch.input.float())
        if raw.dim() == 3:  # signals: a plot of the first few, input and reconstruction overlaid
            self.summaries.signals(shown, self.step())
            return
        if raw.dim() == 5:  # volumes: their middle slice along the first spatial axis
            shown = {k: v[:, :, v.shape[2] // 2] for k, v in shown.items()}
        grids = {f"images/{k}": self.pipeline.display(v) for k, v in shown.items()}
        self.summaries.image_grids(grids, self.step())
        if self.segmenter is not None and raw.dim() == 4:
            self.synthetic(raw)

    @torch.no_grad()
    def synthetic(self, raw: Tensor) -> None:
        """A training batch as DRAEM's networks meet it: inputs with synthetic anomalies, their masks,
        the reconstructions and the segmenter's maps (the same anomalies each time)."""
        batch = self.pipeline(raw, torch.Generator(device=raw.device).manual_seed(0), train=True, centred=True)
        with eval_mode(self.model), eval_mode(self.segmenter):
            out = self.model(batch.input)
            predicted = torch.sigmoid(self.segmenter(batch.input, out))
        norm = self.pipeline.normalizer
        grids = {
            "synthetic/input": self.pipeline.display(norm.inverse(batch.input.float())),
            "synthetic/mask": batch.mask,
            "synthetic/reconstruction": self.pipeline.display(norm.inverse(out.float())),
            "synthetic/predicted_map": predicted.float(),
        }
        self.summaries.image_grids(grids, self.step())

    @torch.no_grad()
    def activations(self, idx: Tensor) -> dict[str, Tensor]:
        h = self.pipeline(self.rows(idx)).input
        out: dict[str, Tensor] = {}
        with eval_mode(self.model):
            for i, block in enumerate(self.model.encoder):
                h, _ = block(h)
                out[f"encoder/{i + 1}"] = h
        return out

    @torch.no_grad()
    def embedding(self, idx: Tensor) -> None:
        if not len(idx):
            return
        batch = self.pipeline(self.rows(idx))
        with eval_mode(self.model):
            codes = self.model.encode(batch.input)
        dataset, labels = self.dataset, None
        if dataset.y_train is not None:
            ys = dataset.y_train[idx.cpu().numpy()]
            labels = [dataset.classes[y] if dataset.classes else str(y) for y in ys]
        self.summaries.embedding(codes, labels, self.pipeline.display(batch.raw), self.step())
