"""Speed machinery: how ``models`` runs fast, apart from what it computes.

The concepts (spec, learner, cells, norms, metrics, state codecs) sit at ``models/`` top level
and say *what* is computed; the modules here make it cheap without changing a number beyond
float rounding. Each is checked against the plain path it replaces.

**How a window is computed** (``RecurrentCell.forward_window``). At batch size 1 the generic path
builds ~20–40 tiny torch ops per step (~1.2 µs of dispatch each); the kernels run the same window
with one ``autograd.Function`` whose loops are numpy calls on rows (~0.3–1 µs each):

1. the **input term** ``N_x(W_x x) + b`` of every step at once (``cell.input_term``), by torch
   and autograd, except three pieces that ``xsite`` runs as one numpy ``Function`` each: a
   Streaming Norm x site (its window's calls in order), a Recurrent BN x site (its positions'
   statistics at once) and a cosine ``W_x x``;
2. the **recurrence**, one ``Function`` per cell kind (``gru_kernel``, ``rnn_kernel``,
   ``lstm_window``): per step one matmul with ``W_hh``, the gates, the sites; the backward walks
   the steps last first by hand (each kernel's docstring derives it), forms the gate derivatives
   of the whole window in one op each and ``dW_hh`` as one matmul;
3. LSTM ``none``/``weight`` keep PyTorch's fused ``torch.lstm`` (faster than numpy here); LSTM
   ``layer``/``streaming`` run the older, more tuned ``lstm_kernel`` with its site workers
   (``sites``).

**How a method plugs in** (``rows``): a method is its **sites** — h sites around ``W_h h``, the
``pre`` site around the summed pre-activation (Online Norm), the ``c`` site (LSTM) — and each
site module has one class in ``rows`` with ``forward(a, t)`` / ``backward(dy, t)`` on the rows
``[B, F]`` of step ``t``, ``grads()`` for its own tensors, and hooks around the window
(``end_forward``, ``begin_backward``, ``end_backward``) for sites with running state,
which they read and write in place through numpy views of the module's buffers, in the order
the generic path does. ``rows.rows_for(module, batch)`` picks the class; ``rows.Plug`` carries a
window's sites into a kernel and their gradients back. A new method needs a ``Rows`` class and
an entry in ``rows_for`` — no kernel changes. A site no class computes (or a case one declines:
Recurrent BN with true batch statistics, Streaming Norm in eval) makes ``supports`` false, and
the generic loop, the oracle of ``tests/test_fastrecurrent.py``, runs. A site whose backward
moves state (Streaming Norm's ``GS``, Online Norm's controls) must see exactly the calls autograd
reaches: its kernel runs when every parameter of the cell needs a gradient (``Rows.routes``,
``Plug.fits``). The kernels are first-order (``once_differentiable``): a double backward
(``create_graph=True``) raises; ``switch.disabled()`` runs the differentiable generic path.

The other pieces:

- ``flat``: every parameter, statistic and optimizer moment as a view of one buffer per dtype,
  so a save point, a rollback, a finiteness check or a state copy is one op;
- ``optim``: the optimizers (Adam, RMSprop, SGD) as one update over those flat buffers;
- ``clone``: a blank learner per spec copied by structure, not rebuilt (``from_bytes``);
- ``arrays``: numpy helpers the kernels share; ``switch``: turns every kernel off
  (``disabled()``) and says what any numpy window needs (``fits``).

Tests: ``tests/test_fastrecurrent.py``, ``tests/test_fastlstm.py``, ``tests/test_optim.py``,
``tests/test_learner.py``. This package imports none of its modules itself: import the one you
need (``from models.fast import gru_kernel``), so that using one piece never runs the others.
"""
