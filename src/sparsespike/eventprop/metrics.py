"""Evaluation metrics of an event-driven network (DESIGN.md "Definitions").

* accuracy: first output spike decides (:func:`~sparsespike.eventprop.losses.correct`).
* <N_S> per layer: spikes per neuron per sample (Fontanini sec. 4.1); overall: all spikes of
  all non-input neurons divided by their number, per sample (input spikes excluded).
* silent neurons per layer: neurons that emit no spike on any sample of the evaluated set;
  also the mean fraction of neurons silent per sample.
* latency: mean time of the first output spike (the classification spike) over samples with
  at least one output spike; ``no_output_frac`` is the fraction of samples with none.
"""

from __future__ import annotations

import torch

from .functional import EventOutput
from .losses import FontaniniLoss, correct

__all__ = ["BatchStats", "evaluate"]


class BatchStats:
    """Accumulates metrics over batches of :class:`EventOutput`."""

    def __init__(self, n_layers: int) -> None:
        self.n = 0
        self.n_correct = 0
        self.spikes = [0.0] * n_layers
        self.neurons = [0] * n_layers
        self.active: list[torch.Tensor | None] = [None] * n_layers
        self.silent_frac_sum = [0.0] * n_layers
        self.latency_sum = 0.0
        self.latency_n = 0
        self.loss_sums: dict[str, float] = {}
        self.n_capped = 0

    def update(self, out: EventOutput, labels: torch.Tensor, parts: dict | None = None) -> None:
        B = labels.shape[0]
        self.n += B
        self.n_correct += int(correct(out.first_spikes, labels).sum())
        for l, c in enumerate(out.counts):
            self.spikes[l] += float(c.sum())
            self.neurons[l] = c.shape[1]
            act = (c > 0).any(dim=0)
            self.active[l] = act if self.active[l] is None else (self.active[l] | act)
            self.silent_frac_sum[l] += float((c == 0).double().mean(dim=1).sum())
        first = out.first_spikes.detach().min(dim=1).values
        fin = torch.isfinite(first)
        self.latency_sum += float(first[fin].sum())
        self.latency_n += int(fin.sum())
        self.n_capped += int(sum(out.n_capped))
        if parts:
            for k, v in parts.items():
                self.loss_sums[k] = self.loss_sums.get(k, 0.0) + v * B

    def result(self) -> dict:
        n = max(self.n, 1)
        ns_layer = [s / (n * max(N, 1)) for s, N in zip(self.spikes, self.neurons, strict=True)]
        total_neurons = sum(self.neurons)
        res = {
            "n_samples": self.n,
            "accuracy": self.n_correct / n,
            "n_s_per_layer": ns_layer,
            "n_s": sum(self.spikes) / (n * max(total_neurons, 1)),
            "spikes_per_sample": sum(self.spikes) / n,
            "silent_neurons_per_layer": [int((~a).sum()) if a is not None else 0 for a in self.active],
            "silent_frac_per_sample_per_layer": [s / n for s in self.silent_frac_sum],
            "latency_ms": self.latency_sum / self.latency_n if self.latency_n else float("nan"),
            "no_output_frac": 1.0 - self.latency_n / n,
            "n_capped": self.n_capped,
        }
        res.update({f"loss_{k}": v / n for k, v in self.loss_sums.items()})
        return res


@torch.no_grad()
def evaluate(
    net: torch.nn.Module,
    input_times: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: FontaniniLoss | None = None,
    batch_size: int = 500,
) -> dict:
    """Run ``net`` on encoded inputs and return the metrics above (plus mean loss parts)."""
    stats = BatchStats(len(net.weights))
    for i in range(0, input_times.shape[0], batch_size):
        x = input_times[i : i + batch_size]
        y = labels[i : i + batch_size]
        out = net(x)
        parts = loss_fn(out, y)[1] if loss_fn is not None else None
        stats.update(out, y, parts)
    return stats.result()
