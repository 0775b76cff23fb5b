"""streamnorm's models: normalization methods and recurrent cells in pure PyTorch.

No HTTP and no Redis here: a user can build, train and load models offline.
"""

from . import norms
from .cells import CELLS, GRUCell, LSTMCell, RecurrentStack, RNNCell
from .norms import NORMS, notify_optimizer_step

__all__ = [
    "CELLS",
    "NORMS",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "RecurrentStack",
    "norms",
    "notify_optimizer_step",
]
