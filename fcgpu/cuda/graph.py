"""The whole training step of a :class:`~fcgpu.fc_net.FullyConnectedNet` captured as
one CUDA graph and replayed (opt-in: ``Solver(..., cuda_graph=True)``,
``fcgpu train --cuda-graph``).

A replay repeats the captured launches with the captured arguments, so everything
that must differ from one step to the next lives in device memory, and the kernels
read it when they run:

* ``ctr`` (uint64[4], kernels/graph.cu ``GraphCounter``): the minibatch index in the
  epoch, the dropout stream base ``dropout_step * (L-1)``, the optimizer step ``t``
  (1-based, the one the next replay uses) and the number of steps run;
* ``perm`` (int64[N]): the epoch's permutation of the training rows, written by the
  host once per epoch; the minibatch is gathered from it at ``ctr[0] * B`` into the
  static buffers ``Xb`` (B, D) and ``yb`` (B,) (``fcgpu_gather_rows``);
* with augmentation (``augment=``), the minibatch is made instead by the augmenting
  gather (:mod:`fcgpu.cuda.augment`, ``kernels/augment.cu``), which reads the batch
  index from ``ctr[0]`` and the epoch from ``epoch_slot`` (uint64[1], written by
  :meth:`GraphedTrainStep.begin_epoch`), so its draws are those of the uncaptured
  Solver's gather; X may then be raw uint8 images with the mean image subtracted there;
  with ``mix`` in ``augment`` (MixUp, CutMix) a second kernel mixes ``Xb`` in place with
  the same counters and writes the mixed targets into the static buffers ``mix``
  (``y2`` int64[B], ``lam`` [B]), which the loss reads;
* ``lr`` (float64[P]): each parameter's learning rate, written by the host once per
  epoch (after the Solver's per-epoch decay), never recaptured for it;
* ``lr_rows`` (with ``lr_schedule=True``: float64[batches per epoch, P]): each step's
  learning rates (a per-step schedule, :mod:`fcgpu.schedules`, computed on the host
  as the uncaptured Solver does and written once per epoch); the step copies its row
  ``ctr[0]`` into ``lr`` before the updates (``fcgpu_gather_rows`` with one row);
* ``corr`` (Adam only, float64[P, batches per epoch, 2]): the bias corrections
  ``(1 - beta1**t, 1 - beta2**t)`` of each step of the epoch, computed on the host
  by :func:`fcgpu.cuda.train_ops.bias_corrections` (the numbers the uncaptured step
  uses) and written once per epoch; the step reads its row at ``ctr[0]``. (A device
  ``pow`` can differ from the host's in the last bit, and Adam turns the last-bit
  noise of a parameter whose true gradient is zero, such as a bias feeding a
  batchnorm, into full-size steps.)
* ``ema_rows`` (with ``ema=``, a :class:`~fcgpu.solver_ema.WeightEMA`: the model's
  dtype, [batches per epoch, 2]): ``(d_t, 1 - d_t)`` of each step's update of the
  average of the weights, computed on the host as the uncaptured Solver does and
  written once per epoch; the step copies its row into ``ema_rate`` and the average's
  update (plain CuPy operations, the uncaptured step's own code) reads it there;
* ``loss_buf`` (one value per batch of the epoch): the step's loss, at ``ctr[0]``;
* the parameters, the batchnorm running statistics, the optimizer state (Adam's
  m and v, the velocity, the RMSProp cache) and the average of the weights are static
  buffers updated in place: the model's, the Solver's and the average's dicts hold
  these very arrays while training.

The step ends with ``fcgpu_graph_advance``, which records the loss and moves the
counters on. Dropout draws its masks from the stream ``ctr[1] + layer``, the formula
of the uncaptured path (``dropout_step * (L-1) + layer``), so the masks, and hence
the losses, are those of the uncaptured Solver.

Matrix products: the layers' products go through :mod:`fcgpu.cuda.blas`, which calls
cuBLAS itself, because CuPy's cuBLAS wrapper raises ``NotImplementedError`` on a
capturing stream (CuPy issue #6290). The uncaptured warm-up step creates the thread's
cuBLAS handle and the side stream's workspace, so nothing is allocated by cuBLAS
inside the capture. Nothing else in the step calls a CuPy library wrapper (cuRAND,
cuSOLVER, cuSPARSE) or copies between host and device (``tests/test_cuda_graph.py``'s
stand-in for CuPy refuses each of these while capturing, as CuPy does). The matmul
precision (:func:`fcgpu.backend.set_matmul_precision`) is baked into the captured
products: a change makes the next epoch recapture.

Memory: the step's temporaries come from a private ``cupy.cuda.MemoryPool`` that
nothing else allocates from while the graph lives (their addresses are baked into the
graph), as PyTorch does with its graph pools. The step runs once uncaptured (a real
training step) on a side stream before it is captured there; replays are launched on
the caller's current stream, so they are ordered with everything else the Solver does
(accuracy checks, loss reads, permutation uploads).

The host keeps exact mirrors of the counters (a step is a step), so nothing is read
back from the device during an epoch; :meth:`GraphedTrainStep.sync_out` writes the
mirrors into the model (``dropout_step``) and the optimizer configs (``t``).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_matmul_precision, is_cupy_array, require_cupy
from ..errors import ConfigError
from ..optim import DEVICE_ADAM, RULES

__all__ = ["GraphedTrainStep", "SUPPORTED_RULES", "supported_rules", "check_supported",
           "COUNTER_SLOTS"]

# kernels/graph.cu GraphCounter
CTR_BATCH, CTR_STREAM, CTR_T, CTR_STEPS, CTR_COUNT = 0, 1, 2, 3, 4
COUNTER_SLOTS = {"batch": CTR_BATCH, "stream": CTR_STREAM, "t": CTR_T, "steps": CTR_STEPS}


def supported_rules():
    """The update rules a captured step can run: those of :data:`fcgpu.optim.RULES`
    with a device kernel."""
    return tuple(name for name, rule in RULES.items() if rule.device is not None)


SUPPORTED_RULES = supported_rules()


def check_supported(model, update_rule):
    """Raise ``ValueError`` unless the step of ``model`` with ``update_rule`` can be
    captured: a :class:`~fcgpu.fc_net.FullyConnectedNet` and one of the named rules
    of :mod:`fcgpu.optim`. Needs no GPU."""
    from ..fc_net import FullyConnectedNet
    supported = supported_rules()
    if not isinstance(update_rule, str) or update_rule not in supported:
        what = getattr(update_rule, "__name__", None) or repr(update_rule)
        raise ConfigError("cuda_graph: update rule %s cannot be captured; the CUDA-graph "
                          "step supports the named rules %s" % (what, ", ".join(supported)))
    if not isinstance(model, FullyConnectedNet):
        raise ConfigError("cuda_graph: the CUDA-graph step supports FullyConnectedNet models, "
                         "got %s" % type(model).__name__)


class GraphedTrainStep:
    """One Solver's training step as a CUDA graph (see the module docstring).

    ``GraphedTrainStep(model, update_rule, X, y, batch_size, batches_per_epoch)``;
    then per epoch :meth:`begin_epoch` (the permutation, the learning rates, the
    counters), :meth:`step` once per batch (returns the step's loss as a 0-d device
    array, valid until the same batch slot is run again next epoch) and
    :meth:`sync_out` (host mirrors into the model and the configs).

    ``X`` (N, ...) and ``y`` (N,) are the training data already on the device in the
    model's dtype (with ``augment``, also uint8). Every batch has ``min(batch_size, N)``
    rows. ``augment``: None, or a dict ``mode, pad, image_shape, seed, mean`` (the
    arguments of :func:`fcgpu.augment.augment_gather`). ``ema``: None, or the average
    of the weights to update after the optimizer's step (an object with ``params``,
    ``bn``, ``updates``, ``rates(count)`` and ``apply(model, d, a)``: the Solver's
    :class:`~fcgpu.solver_ema.WeightEMA`).
    """

    def __init__(self, model, update_rule, X, y, batch_size, batches_per_epoch, augment=None,
                 lr_schedule=False, ema=None):
        check_supported(model, update_rule)
        cp = require_cupy()
        self.cp = cp
        self.model = model
        self.rule = update_rule
        self.spec = RULES[update_rule]
        self.dtype = np.dtype(model.dtype)
        if not is_cupy_array(X) or not is_cupy_array(y):
            raise ValueError("cuda_graph: the training data must be CuPy arrays")
        self.augment = dict(augment) if augment is not None else None
        if X.dtype != self.dtype and not (augment is not None and X.dtype == np.uint8):
            raise ValueError("cuda_graph: X has dtype %s, the model %s" % (X.dtype, self.dtype))
        self.X_source, self.y_source = X, y  # (the Solver's arrays, for reuse checks)
        n = int(X.shape[0])
        d = int(np.prod(X.shape[1:]))
        if y.shape != (n,):
            raise ValueError("cuda_graph: y must have shape (%d,), got %s" % (n, tuple(y.shape)))
        self.X = cp.ascontiguousarray(X).reshape(n, d)
        self.y = cp.ascontiguousarray(y, dtype=np.int64)
        self.n, self.d = n, d
        self.batch = max(1, min(int(batch_size), n))
        self.per_epoch = int(batches_per_epoch)
        if self.per_epoch < 1 or self.per_epoch * self.batch > n:
            raise ValueError("cuda_graph: %d batches of %d rows do not fit in %d rows"
                             % (self.per_epoch, self.batch, n))
        self.names = list(model.params)
        L1 = model.num_layers - 1
        self.stream_stride = L1 if (model.use_dropout and model.fresh_masks) else 0

        # static buffers: allocated here, outside the private pool, referenced by self
        # for as long as the graph may replay
        self.Xb = cp.empty((self.batch, d), dtype=self.dtype)
        self.yb = cp.zeros(self.batch, dtype=np.int64)
        self.perm = cp.zeros(n, dtype=np.int64)
        self.ctr = cp.zeros(CTR_COUNT, dtype=np.uint64)
        self.epoch_slot = cp.zeros(1, dtype=np.uint64) if augment is not None else None
        if augment is not None and augment.get("mean") is not None:
            self.augment["mean"] = cp.ascontiguousarray(cp.asarray(augment["mean"]))
        self.mix = self._mix_targets(augment)
        self.lr = cp.zeros(len(self.names), dtype=np.float64)
        self.corr = (cp.zeros((len(self.names), self.per_epoch, 2), dtype=np.float64)
                     if self.spec.device == DEVICE_ADAM else None)
        self.loss_buf = cp.zeros(self.per_epoch, dtype=self.dtype)
        self.lr_rows = self.ema_rows = None
        self.ema = ema
        if lr_schedule or ema is not None:  # (tables of which a step reads row ctr[0])
            self._rows_perm = cp.asarray(np.arange(self.per_epoch, dtype=np.int64))
            self._rows_y = cp.zeros(self.per_epoch, dtype=np.int64)
            self._rows_yb = cp.zeros(1, dtype=np.int64)
        if lr_schedule:
            self.lr_rows = cp.zeros((self.per_epoch, len(self.names)), dtype=np.float64)
        if ema is not None:
            self.ema_rows = cp.zeros((self.per_epoch, 2), dtype=self.dtype)
            self.ema_rate = cp.zeros((1, 2), dtype=self.dtype)
        self._ema = {}         # name or (layer, key) -> static buffer of the average
        self._params = {}      # name -> static parameter buffer
        self._bn = {}          # (layer, key) -> static running statistic
        self._state = {}       # (name, key) -> static optimizer state
        self._baked = None     # what the captured graph holds by value

        # host mirrors of the device counters
        self._batch = 0
        self._epoch_steps = 0  # steps since begin_epoch (at most per_epoch)
        self._dstep = int(model.dropout_step)
        self._t = 0
        self._steps = 0
        self._ema_updates = 0
        self._synced = True    # the mirrors hold nothing the model/configs lack

        self._graph = None
        self._pool = None
        self._side = None
        self.captures = 0      # graphs captured (1 unless something baked changed)
        self.replays = 0       # graph launches (the first step of a capture runs plain)

    # ------------------------------------------------------------- static state

    def _mix_targets(self, augment):
        """None, or with ``mix`` in ``augment`` the static buffers (y2, lam) of the mixed
        targets; the Beta table goes to the device now (a capture copies nothing)."""
        if augment is None or augment.get("mix", "none") == "none":
            return None
        from .augment import device_table
        device_table(augment["mix_alpha"])
        return (self.cp.zeros(self.batch, dtype=np.int64),
                self.cp.zeros(self.batch, dtype=self.dtype))

    def _static(self, table, key, current, shape, what):
        """The static buffer for ``key``: ``current`` itself the first time when it
        is a contiguous CuPy array of the model's dtype and ``shape`` (else a copy);
        later, a different ``current`` (a checkpoint load, the Solver's restore_best)
        is copied into the existing buffer."""
        cp = self.cp
        buf = table.get(key)
        if current is None:
            current = cp.zeros(shape, dtype=self.dtype)
        if tuple(getattr(current, "shape", ())) != tuple(shape):
            raise ValueError("cuda_graph: %s has shape %s, expected %s"
                             % (what, tuple(getattr(current, "shape", ())), tuple(shape)))
        if buf is None:
            if (is_cupy_array(current) and current.dtype == self.dtype
                    and current.flags.c_contiguous):
                buf = current
            else:
                buf = cp.ascontiguousarray(cp.asarray(current), dtype=self.dtype)
            table[key] = buf
        elif current is not buf:
            buf[...] = cp.asarray(current, dtype=self.dtype)
        return buf

    def _bind(self, configs):
        """Make the model's and the configs' arrays the static buffers; apply the
        rule's defaults to the configs as fcgpu.optim would; return what the graph
        bakes in by value."""
        model = self.model
        spec = self.spec
        if set(configs) != set(self.names) or set(model.params) != set(self.names):
            raise ValueError("cuda_graph: the parameters changed (%s); build a new Solver"
                             % ", ".join(sorted(set(configs) ^ set(self.names))))
        baked = []
        for name in self.names:
            w = self._static(self._params, name, model.params[name],
                             model.params[name].shape, "parameter " + name)
            model.params[name] = w
            cfg = configs[name]
            for key, value in spec.defaults:
                cfg.setdefault(key, value)
            for key in spec.state:
                cfg[key] = self._static(self._state, (name, key), cfg.get(key), w.shape,
                                        "%s of %s" % (key, name))
            baked.append(tuple(float(cfg[k]) for k in spec.hyper if k != "learning_rate"))
        for i, bp in enumerate(model.bn_params):
            dim = model.hidden_dims[i]
            for key in ("running_mean", "running_var"):
                bp[key] = self._static(self._bn, (i, key), bp.get(key), (dim,),
                                       "bn_params[%d][%r]" % (i, key))
        self._bind_ema()
        bn_consts = tuple((bp.get("eps", 1e-5), bp.get("momentum", 0.9))
                          for bp in model.bn_params)
        return (tuple(baked), bn_consts, model.reg, dict(model.dropout_param).get("p"),
                model.dropout_key, model.fresh_masks, model.use_dropout, model.use_batchnorm,
                get_matmul_precision())

    def _bind_ema(self):
        """Make the average's arrays static buffers (its running statistics start at
        zeros, as the model's do, when it has none yet)."""
        ema = self.ema
        if ema is None:
            return
        for name in self.names:
            ema.params[name] = self._static(self._ema, name, ema.params[name],
                                            self._params[name].shape, "the average of " + name)
        for i, (mine, bp) in enumerate(zip(ema.bn, self.model.bn_params)):
            for key in ("running_mean", "running_var"):
                mine[key] = self._static(self._ema, (i, key), mine.get(key), bp[key].shape,
                                         "the average of bn_params[%d][%r]" % (i, key))

    def begin_epoch(self, order, configs, epoch=0, lr_steps=None):
        """Before an epoch's steps: bind the static buffers, upload the permutation
        ``order`` (host integers, a permutation of range(N)), the learning rates,
        Adam's bias corrections for the epoch's steps, the counters (batch 0, the
        model's dropout_step, the configs' t) and, with augmentation, ``epoch``.
        ``lr_steps`` (with ``lr_schedule``): the learning rate of each step of the
        epoch, for every parameter."""
        cp = self.cp
        self._synced = True
        order = np.asarray(order, dtype=np.int64)
        if order.shape != (self.n,):
            raise ValueError("cuda_graph: the permutation has shape %s, expected (%d,)"
                             % (order.shape, self.n))
        if (lr_steps is None) != (self.lr_rows is None):
            raise ValueError("cuda_graph: lr_steps must be given exactly when the step was "
                             "built with lr_schedule=True")
        if lr_steps is not None:
            lr_steps = np.asarray(lr_steps, dtype=np.float64)
            if lr_steps.shape != (self.per_epoch,):
                raise ValueError("cuda_graph: lr_steps has shape %s, expected (%d,)"
                                 % (lr_steps.shape, self.per_epoch))
        baked = self._bind(configs)
        if self._baked is not None and baked != self._baked:
            self._graph = None  # a hyperparameter baked into the graph changed: recapture
        self._baked = baked
        if self.spec.device == DEVICE_ADAM:  # (one step counter t, on the device)
            ts = {int(configs[name]["t"]) for name in self.names}
            if len(ts) != 1:
                raise ConfigError("cuda_graph: Adam's step counters differ between "
                                  "parameters (%s); the graph keeps one" % sorted(ts))
            self._t = ts.pop()
        self._dstep = int(self.model.dropout_step)
        self._batch = 0
        self._epoch_steps = 0
        stream = cp.cuda.get_current_stream()
        self.perm.set(order, stream=stream)
        self.lr.set(np.array([float(configs[name]["learning_rate"]) for name in self.names],
                             dtype=np.float64), stream=stream)
        if self.corr is not None:
            from .train_ops import bias_corrections
            self.corr.set(np.stack([
                bias_corrections(configs[name]["beta1"], configs[name]["beta2"], self._t + 1,
                                 self.per_epoch) for name in self.names]), stream=stream)
        self.ctr.set(self._counters(), stream=stream)
        if self.lr_rows is not None:
            self.lr_rows.set(np.ascontiguousarray(np.repeat(lr_steps[:, None], len(self.names),
                                                            axis=1)), stream=stream)
        if self.ema is not None:
            self._ema_updates = int(self.ema.updates)
            self.ema_rows.set(self.ema.rates(self.per_epoch), stream=stream)
        if self.epoch_slot is not None:
            self.epoch_slot.set(np.array([epoch], dtype=np.uint64), stream=stream)
        self._synced = False
        # the host arrays above may be freed once set() returns: pageable copies are
        # staged before it does

    def _counters(self):
        c = np.zeros(CTR_COUNT, dtype=np.uint64)
        c[CTR_BATCH] = self._batch
        c[CTR_STREAM] = self._dstep * self.stream_stride
        c[CTR_T] = self._t + 1
        c[CTR_STEPS] = self._steps
        return c

    def counters(self):
        """The device counters, read back (synchronizes; for tests and diagnostics)."""
        return {k: int(v) for k, v in zip(("batch", "stream", "t", "steps"), self.ctr.get())}

    def host_counters(self):
        """The host mirrors of :meth:`counters`."""
        return {k: int(v) for k, v in zip(("batch", "stream", "t", "steps"), self._counters())}

    def sync_out(self, configs):
        """Write the host mirrors into the model (``dropout_step``) and the optimizer
        configs (Adam's ``t``): what the uncaptured path would hold after as many
        steps. The arrays already are the model's and the configs' own. (A no-op
        unless :meth:`begin_epoch` completed since the last call.)"""
        if self._synced:
            return
        self._synced = True
        if self.stream_stride:
            self.model.dropout_step = self._dstep
        if self.spec.device == DEVICE_ADAM:
            for name in self.names:
                configs[name]["t"] = self._t
        if self.ema is not None:
            self.ema.updates = self._ema_updates

    # ------------------------------------------------------------- the step

    def _body(self):
        """Gather, forward/backward, update in place, record the loss, advance."""
        from . import train_ops as ops
        model = self.model
        if self.augment is None:
            ops.gather_rows(self.X, self.y, self.perm, self.ctr[CTR_BATCH:CTR_BATCH + 1],
                            self.Xb, self.yb)
        else:
            from .augment import augment_gather
            a = self.augment
            augment_gather(self.X, self.y, self.perm, self.ctr[CTR_BATCH:CTR_BATCH + 1],
                           self.batch, a["image_shape"], a["mode"], a["pad"], a["seed"],
                           self.epoch_slot, a.get("mean"), self.dtype, out=self.Xb,
                           y_out=self.yb)
            if self.mix is not None:
                from .augment import mix_batch
                mix_batch(self.Xb, self.yb, self.ctr[CTR_BATCH:CTR_BATCH + 1], a["image_shape"],
                          a["mix"], a["mix_alpha"], a["seed"], self.epoch_slot, *self.mix)
        targets = {} if self.mix is None else {"mix": self.mix}
        prev = model._device_stream_base
        model._device_stream_base = (self.ctr[CTR_STREAM:CTR_STREAM + 1]
                                     if self.stream_stride else None)
        try:
            loss, grads = model.loss(self.Xb, self.yb, **targets)
        finally:
            model._device_stream_base = prev
        batch = self.ctr[CTR_BATCH:CTR_BATCH + 1]
        if self.lr_rows is not None:  # this step's rates: row ctr[0] of lr_rows
            ops.gather_rows(self.lr_rows, self._rows_y, self._rows_perm, batch,
                            self.lr.reshape(1, len(self.names)), self._rows_yb)
        spec = self.spec
        keys = [k for k in spec.hyper if k != "learning_rate"]  # (the order _bind bakes)
        for k, name in enumerate(self.names):
            w = self._params[name]
            lr_ptr = self.lr[k:k + 1]
            h = dict(zip(keys, self._baked[0][k]))
            state = [self._state[(name, key)] for key in spec.state]
            if spec.device == DEVICE_ADAM:
                ops.adam_step_device(w, grads[name], *state, lr_ptr, self.corr[k], batch,
                                     h["beta1"], h["beta2"], h["epsilon"])
            else:
                ops.rule_step_device(spec.device_id, w, grads[name], *(state or [None]),
                                     lr_ptr, *(h[key] for key in spec.device_args))
        if self.ema is not None:  # the average: (d_t, 1 - d_t) from row ctr[0] of ema_rows
            ops.gather_rows(self.ema_rows, self._rows_y, self._rows_perm, batch, self.ema_rate,
                            self._rows_yb)
            self.ema.apply(model, self.ema_rate[0, 0:1], self.ema_rate[0, 1:2])
        if not is_cupy_array(loss):  # (a host value would be baked into the graph)
            raise TypeError("cuda_graph: the model's loss must be a device array, got %s"
                            % type(loss).__name__)
        if loss.dtype != self.dtype:
            loss = loss.astype(self.dtype)
        ops.graph_advance(self.ctr, loss, self.loss_buf, self.per_epoch, self.stream_stride)

    def _capture(self):
        """Run the step once uncaptured (warm-up: compiles kernels, creates library
        handles and workspaces, fills the private pool), then capture it. Both on a
        side stream with the private pool. The warm-up is a real step."""
        cp = self.cp
        model = self.model
        self._graph = None
        if self._pool is None:
            self._pool = cp.cuda.MemoryPool()
        if self._side is None:
            self._side = cp.cuda.Stream(non_blocking=True)
        cp.cuda.get_current_stream().synchronize()  # uploads and earlier steps done
        saved = model.dropout_step
        graph = None
        try:
            with cp.cuda.using_allocator(self._pool.malloc), self._side:
                self._body()
                model.dropout_step = saved  # (loss() counts its calls on the host)
                self._side.synchronize()
                self._side.begin_capture()
                try:
                    self._body()
                except BaseException:
                    try:
                        self._side.end_capture()
                    except Exception:
                        pass
                    raise
                graph = self._side.end_capture()
            self._side.synchronize()
        finally:
            model.dropout_step = saved
        self._graph = graph
        self.captures += 1

    def step(self):
        """One training step: the first after a (re)capture runs uncaptured, the rest
        replay the graph on the current stream. Returns the loss as a 0-d view of
        ``loss_buf``. An epoch has at most ``batches_per_epoch`` steps (the rows of
        its permutation, and of Adam's bias corrections): :meth:`begin_epoch` starts
        the next."""
        if self._epoch_steps >= self.per_epoch:
            raise RuntimeError("cuda_graph: %d steps already ran in this epoch (batches per "
                               "epoch); call begin_epoch() first" % self._epoch_steps)
        b = self._batch
        if self._graph is None:
            self._capture()
        else:
            self._graph.launch(stream=self.cp.cuda.get_current_stream())
            self.replays += 1
        self._batch = 0 if b + 1 >= self.per_epoch else b + 1
        self._dstep += 1 if self.stream_stride else 0
        self._t += 1
        self._steps += 1
        self._ema_updates += 1 if self.ema is not None else 0
        self._epoch_steps += 1
        return self.loss_buf[b]

    def close(self):
        """Drop the graph and the private pool (the static buffers stay with the model
        and the configs)."""
        self._graph = None
        if self._pool is not None:
            self._pool.free_all_blocks()
        self._pool = None
