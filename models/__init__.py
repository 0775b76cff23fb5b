"""streamnorm's models: normalization methods, recurrent cells and the online learner.

Pure PyTorch: no HTTP and no Redis here, so a user can build, train and load models offline.
"""

from . import norms
from .cells import CELLS, GRUCell, LSTMCell, RecurrentStack, RNNCell
from .context import StreamContext
from .inputs import InvalidInput
from .kept import KeptPrediction
from .learner import LearnResult, OnlineLearner, UpdateRejected
from .norms import NORMS, notify_optimizer_step
from .spec import GuardSpec, ModelSpec, OptimizerSpec
from .state import StateError

__all__ = [
    "CELLS",
    "NORMS",
    "GRUCell",
    "GuardSpec",
    "InvalidInput",
    "KeptPrediction",
    "LSTMCell",
    "LearnResult",
    "ModelSpec",
    "OnlineLearner",
    "OptimizerSpec",
    "RNNCell",
    "RecurrentStack",
    "StateError",
    "StreamContext",
    "UpdateRejected",
    "norms",
    "notify_optimizer_step",
]
