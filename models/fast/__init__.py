"""Speed machinery: how ``models`` runs fast, apart from what it computes.

The concepts (spec, learner, cells, norms, metrics, state codecs) sit at ``models/`` top level
and say *what* is computed; the modules here make it cheap without changing a number:

- ``flat``: every parameter, statistic and optimizer moment as a view of one buffer per dtype,
  so a save point, a rollback, a finiteness check or a state copy is one op;
- ``optim``: the optimizers (Adam, RMSprop, SGD) as one update over those flat buffers;
- ``clone``: a blank learner per spec copied by structure, not rebuilt (``from_bytes``);
- ``lstm_kernel``: a hand-written LSTM window for Layer and Streaming Norm in numpy, with its
  per-site workers (``sites``) and shared array helpers (``arrays``);
- ``gru_kernel``, ``rnn_kernel``: the recurrence of a ``none`` / ``weight`` / ``layer`` GRU
  window and a ``layer`` RNN window in numpy, the methods plugged in as h sites (``rows``: one
  class of per-step site math per method);
- ``switch``: turns the kernels off (``disabled()``), for comparisons.

Each is checked against the plain path it replaces (``tests/test_fastlstm.py``,
``tests/test_fastrecurrent.py``, ``tests/test_optim.py``, ``tests/test_learner.py``). This package
imports none of them itself: import the module you need (``from models.fast import
lstm_kernel``), so that using one piece (``cells`` uses the kernels) never runs the others.
"""
