"""Exact event-driven LIF simulation with EventProp gradients (Wunderlich & Pehle 2021) and the
spike-rate losses of Fontanini et al. 2024.

Layout (maths as functions, a thin module on top):

* :mod:`.params`     neuron model :class:`LIFParams` and numerics :class:`SolverOptions`
* :mod:`.simulate`   exact forward (closed form + bracketed Newton root finding), numba
* :mod:`.adjoint`    EventProp backward (closed-form adjoint, jumps at spikes), numba
* :mod:`.functional` :func:`event_forward`, the torch autograd bridge
* :mod:`.network`    :class:`EventNetwork`
* :mod:`.losses`     CE, CS, AS, SP and L_W / L / L_A
* :mod:`.encode`     Yin-Yang and MNIST time encodings
* :mod:`.metrics`    accuracy, <N_S>, silent neurons, latency
* :mod:`.train`      :func:`train_eventprop` (2-phase training from a config)

See docs/eventprop.md.
"""

from .encode import encode_mnist, encode_yinyang
from .functional import EventOutput, event_forward
from .losses import (
    FontaniniLoss,
    as_loss,
    ce_loss,
    correct,
    cs_loss,
    first_spike_times,
    make_loss,
    predict,
    sp_loss,
)
from .network import MNIST_INIT_RANGES, YINYANG_INIT_RANGES, EventNetwork
from .params import LIFParams, SolverOptions

__all__ = [
    "LIFParams",
    "SolverOptions",
    "EventOutput",
    "event_forward",
    "EventNetwork",
    "YINYANG_INIT_RANGES",
    "MNIST_INIT_RANGES",
    "FontaniniLoss",
    "make_loss",
    "ce_loss",
    "cs_loss",
    "as_loss",
    "sp_loss",
    "first_spike_times",
    "predict",
    "correct",
    "encode_yinyang",
    "encode_mnist",
]
