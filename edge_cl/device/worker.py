"""Learning in the background: train a copy of the model, swap it in whole, checkpoint it.

Inference never waits for training and never sees a half-updated model: each job deep-copies the
model in use, changes the copy, and :meth:`Classifier.swap` puts it in use under a lock. A job that
fails (an unusable label, a label to forget that is not known) leaves the model in use as it was.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_cl.device.classifier import Classifier
from edge_cl.device.config import check_unknown_accept
from edge_cl.device.state import DeviceState
from edge_cl.errors import EdgeClError
from edge_cl.learner.labels import Label, check_label
from edge_cl.learner.protocol import Learner, replay_memory

log = logging.getLogger("edge_cl.device")

CALIBRATION_PATTERNS = 512
"""Replayed patterns the unknown threshold is calibrated on after each update."""


def recalibrate(model: Learner, accept: float) -> str | None:
    """Set ``model``'s unknown threshold so ``accept`` of known-class views pass (``accept``
    1: none is unknown).

    The source is the novelty of taught views scored before they were learned, where the model
    keeps it (AR1*: ``calibrate_unknown_on_teaching``, once re-teaching a known object has given
    it enough scores); otherwise up to ``CALIBRATION_PATTERNS`` replayed patterns, which look
    more familiar than new views and so reject somewhat more of them. Nothing changes with
    fewer than two classes on replay, or a learner that keeps neither (NCM, SLDA, the
    scikit-learn heads, AR1* without replay): those keep the ``unknown_threshold`` they were
    built with. Returns the source used, ``"teaching"`` or ``"replay"``, or None."""
    teaching = getattr(model, "calibrate_unknown_on_teaching", None)
    if callable(teaching) and teaching(accept) is not None:
        return "teaching"
    memory = replay_memory(model)
    if memory is None or len(memory) == 0 or len(model.classes_) < 2:
        return None
    x, _ = memory.sample(min(CALIBRATION_PATTERNS, len(memory)))
    model.calibrate_unknown(x, accept=accept)
    return "replay"


@dataclass(frozen=True)
class JobResult:
    """What one job did. ``ok`` is False when it failed (``error`` says why, ``failed_at`` where:
    ``"update"`` left the previous model in use, ``"checkpoint"`` kept the new model in use but
    could not write it). ``latency_seconds`` runs from the label event (teach released) to the
    new model in use; ``update_seconds`` is the training time alone."""

    job: str
    label: Label | None = None
    ok: bool = True
    error: str | None = None
    patterns: int = 0
    update_seconds: float = 0.0
    latency_seconds: float | None = None
    checkpoint_bytes: int = 0
    classes: tuple[Label, ...] = ()
    failed_at: str | None = None


MAX_QUEUED_UPDATES = 3
"""Learn, forget and recalibrate jobs that may wait behind the running one. Beyond it a forget,
a recalibration, or a learn not ``reserved``, raises :class:`WorkerBusy` (the MCU hears NACK
BUSY, the socket an error), so a flood of requests cannot queue minutes of work that a stop
must finish."""


class WorkerBusy(EdgeClError):
    """The learner has :data:`MAX_QUEUED_UPDATES` jobs waiting: try again when it is idle."""


@dataclass
class _Job:
    kind: str
    label: Label | None
    latents: np.ndarray | None
    since: float
    future: Future[JobResult]
    accept: float | None = None  # a recalibrate job's new unknown_accept
    new_label: Label | None = None  # a rename job's new name for ``label``


class LearnerWorker:
    """A thread running learn / forget / rename / recalibrate / save jobs in order; each returns a
    ``Future[JobResult]``.

    The model is any :class:`~edge_cl.learner.protocol.Learner`. ``checkpoint`` is written
    (atomically) after every learned batch, every forget and every recalibration.
    Every change recalibrates the unknown threshold to ``unknown_accept`` (:func:`recalibrate`:
    on teach views scored before learning, else replayed patterns; learners keeping neither
    keep theirs), and
    :meth:`set_unknown_accept` changes it and recalibrates at once.
    ``on_state`` hears LEARNING / SAVING / IDLE; ``on_result`` hears every result.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from edge_cl.device.config import DeviceConfig
    >>> state = Path(tempfile.mkdtemp())
    >>> clf = Classifier.open(DeviceConfig(state_dir=state, runtime="onnx", cut="pool"))
    >>> x = clf.latents([np.full((64, 64, 3), v, np.uint8) for v in (0, 250) for _ in range(4)])
    >>> with LearnerWorker(clf, state / "learner.ckpt") as worker:
    ...     a = worker.learn("dark", x[:4]).result()
    ...     b = worker.learn("light", x[4:]).result()
    ...     bad = worker.forget("plaid").result()
    >>> a.ok, b.classes, bad.ok, [v.label for v in clf.predict(x[[0, 7]])]
    (True, ('dark', 'light'), False, ['dark', 'light'])
    """

    def __init__(
        self,
        classifier: Classifier,
        checkpoint: Path,
        *,
        unknown_accept: float = 1.0,
        on_state: Callable[[DeviceState], None] | None = None,
        on_result: Callable[[JobResult], None] | None = None,
    ) -> None:
        self.classifier = classifier
        self.checkpoint = checkpoint
        self.unknown_accept = unknown_accept
        self.on_state = on_state
        self.on_result = on_result
        self.results: deque[JobResult] = deque(maxlen=1000)
        """The latest results, oldest first."""
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._waiting_updates = 0  # learn / forget jobs queued, not yet started
        self._queued_save: Future[JobResult] | None = None  # a save not yet started
        self._state = DeviceState.IDLE
        self._dirty = False
        self.last_update: float | None = None
        """``time.monotonic()`` when the model in use last changed (learn, forget, rename,
        recalibrate), or None since start."""
        self._thread = threading.Thread(target=self._run, name="edge-cl-learner", daemon=True)

    # ------------------------------------------------------------------------------ control
    def start(self) -> LearnerWorker:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queued jobs, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def __enter__(self) -> LearnerWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def busy(self) -> bool:
        """Whether a job is queued or running."""
        with self._idle:
            return self._pending > 0

    @property
    def pending(self) -> int:
        """Jobs queued or running: what a stop must still finish (at most
        :data:`MAX_QUEUED_UPDATES` waiting updates, the running job, the reserved teach and one
        save)."""
        with self._idle:
            return self._pending

    @property
    def state(self) -> DeviceState:
        """IDLE, LEARNING (learn, forget or recalibrate running) or SAVING."""
        return self._state

    @property
    def dirty(self) -> bool:
        """Whether the model in use changed since the last checkpoint written."""
        return self._dirty

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job is queued or running; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    # --------------------------------------------------------------------------------- jobs
    def learn(
        self,
        label: Label,
        latents: np.ndarray,
        since: float | None = None,
        *,
        reserved: bool = False,
    ) -> Future[JobResult]:
        """Queue one batch of ``latents`` of ``label``; ``since`` is the label event's
        ``time.monotonic()`` (default: now). ``WorkerBusy`` if :data:`MAX_QUEUED_UPDATES` jobs
        wait, unless ``reserved``: the device's one teach in progress, admitted when it started
        (:meth:`has_room`), is never refused at its stop, so its frames are never lost."""
        return self._submit("learn", label, latents, since, reserved=reserved)

    def forget(self, label: Label) -> Future[JobResult]:
        """Queue forgetting ``label``; ``WorkerBusy`` if :data:`MAX_QUEUED_UPDATES` jobs wait."""
        return self._submit("forget", label, None, None)

    def rename(self, label: Label, new: Label) -> Future[JobResult]:
        """Queue calling class ``label`` ``new`` (all it learned kept); ``LabelError`` now if
        ``new`` is not a valid label, ``WorkerBusy`` if :data:`MAX_QUEUED_UPDATES` jobs wait."""
        return self._submit("rename", label, None, None, new_label=check_label(new))

    def set_unknown_accept(self, accept: float) -> Future[JobResult]:
        """Queue setting ``unknown_accept`` and recalibrating the model in use with it (on a
        copy, swapped in whole, then checkpointed, like a learn); the jobs queued before it
        still calibrate with the old value. ``ConfigError`` unless ``0 < accept <= 1``,
        ``WorkerBusy`` if :data:`MAX_QUEUED_UPDATES` jobs wait: either way nothing changes."""
        return self._submit("recalibrate", None, None, None, accept=check_unknown_accept(accept))

    def save(self) -> Future[JobResult]:
        """Queue writing the checkpoint of the model in use. A save already waiting serves
        this request too (its future is returned): repeated SAVEs cost one write."""
        with self._idle:
            if self._queued_save is not None:
                return self._queued_save
            future = self._submit_locked("save", None, None, None)
            self._queued_save = future
            return future

    def has_room(self) -> bool:
        """Whether a learn or forget would be queued now (fewer than the maximum waiting)."""
        with self._idle:
            return self._waiting_updates < MAX_QUEUED_UPDATES

    def _submit(
        self,
        kind: str,
        label: Label | None,
        latents: np.ndarray | None,
        since: float | None,
        reserved: bool = False,
        accept: float | None = None,
        new_label: Label | None = None,
    ) -> Future[JobResult]:
        with self._idle:
            if not reserved and self._waiting_updates >= MAX_QUEUED_UPDATES:
                raise WorkerBusy(
                    f"the learner has {self._waiting_updates} updates waiting: try again when "
                    "it is idle (status shows learner_state)"
                )
            self._waiting_updates += 1
            return self._submit_locked(kind, label, latents, since, accept, new_label)

    def _submit_locked(
        self,
        kind: str,
        label: Label | None,
        latents: np.ndarray | None,
        since: float | None,
        accept: float | None = None,
        new_label: Label | None = None,
    ) -> Future[JobResult]:
        future: Future[JobResult] = Future()
        self._pending += 1
        job = _Job(kind, label, latents, since or time.monotonic(), future, accept, new_label)
        self._queue.put(job)
        return future

    # ------------------------------------------------------------------------------- thread
    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._idle:
                if job.kind == "save":
                    self._queued_save = None  # a save asked for from now on writes anew
                else:
                    self._waiting_updates -= 1
            try:
                result = self._do(job)
            except Exception as e:  # a bug must not kill the service's only learner thread
                log.exception("%s job failed unexpectedly", job.kind)
                error = f"internal error: {e!r}"
                result = JobResult(job.kind, job.label, False, error, failed_at="update")
            self._set_state(DeviceState.IDLE)
            self.results.append(result)
            if not result.ok:
                log.error("%s %r failed: %s", job.kind, job.label, result.error)
            if self.on_result is not None:
                self.on_result(result)
            job.future.set_result(result)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _do(self, job: _Job) -> JobResult:
        if job.kind == "save":
            model = self.classifier.learner
            self._set_state(DeviceState.SAVING)
            return self._save(JobResult("save", classes=tuple(model.classes_)), model)
        self._set_state(DeviceState.LEARNING)
        start = time.perf_counter()
        model = copy.deepcopy(self.classifier.learner)
        accept = self.unknown_accept if job.accept is None else job.accept
        try:
            if job.kind == "learn":
                assert job.latents is not None
                model.partial_fit(job.latents, [job.label] * len(job.latents))
            elif job.kind == "forget":
                model.forget(job.label)
            elif job.kind == "rename":
                model.rename(job.label, job.new_label)
            recalibrate(model, accept)
        except EdgeClError as e:
            return JobResult(
                job.kind, job.label, False, str(e), classes=self._classes(), failed_at="update"
            )
        self.unknown_accept = accept
        seconds = time.perf_counter() - start
        self.classifier.swap(model)
        self._dirty = True
        self.last_update = time.monotonic()
        result = JobResult(
            job.kind,
            job.label,
            patterns=0 if job.latents is None else len(job.latents),
            update_seconds=seconds,
            latency_seconds=time.monotonic() - job.since if job.kind == "learn" else None,
            classes=tuple(model.classes_),
        )
        self._set_state(DeviceState.SAVING)
        return self._save(result, model)

    def _save(self, result: JobResult, model: Learner) -> JobResult:
        try:
            size = model.save(self.checkpoint)
        except (OSError, EdgeClError) as e:
            error = f"cannot write the checkpoint {self.checkpoint}: {e}"
            return replace(result, ok=False, error=error, failed_at="checkpoint")
        self._dirty = self.classifier.learner is not model
        return replace(result, checkpoint_bytes=size)

    def _classes(self) -> tuple[Label, ...]:
        return tuple(self.classifier.learner.classes_)

    def _set_state(self, state: DeviceState) -> None:
        if state != self._state:
            self._state = state
            if self.on_state is not None:
                self.on_state(state)
