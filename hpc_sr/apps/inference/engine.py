"""Units through the model, batched across units, with reading and writing off the main thread.

    engine = Engine(predict, opts, ledger, trained=payload.get("data_values"), history=lines, provenance=p)
    outcomes = engine.run(units, should_stop=flag.requested)      # engine.stopped: a stop was honoured

- A small pool of reader threads runs ``Format.read`` on the next units (in order, a few ahead).
- Each image is normalised on its own (:mod:`~hpc_sr.apps.inference.pixels`) and queued by shape; a queue
  that reaches ``batch_size`` images goes through the model (:class:`~hpc_sr.apps.inference.predict.
  Predictor`), whatever units they came from. When too many units wait on partly filled queues, the queues
  of the oldest are run. With ``samples`` each unit runs on its own (its noise seeded by its id).
- A unit whose images are all done goes to the writer thread: ``Format.write`` publishes its outputs
  (atomically), then the ledger records it ``done``. With ``durability="batch"`` (the default) the writer
  writes the outputs of the units waiting for it to their temporary names (up to ``publish.BATCH_UNITS``;
  handed over sooner when no unit is waiting and the committer is idle) and a committer thread makes each
  such batch durable and visible together and records its units with one append, while the writer goes on
  with the next (:mod:`~hpc_sr.apps.inference.publish`); ``"file"``: each output fsynced and renamed on its
  own, each record fsynced on its own. Complete units wait for the writer up to ``WRITE_QUEUE`` units and
  ``WRITE_BYTES`` of pixels (one unit always): memory does not grow with the catalog.
- A bad unit (unreadable, not an image layout, every pixel blank, the model or the write failing) is recorded
  ``failed`` with its reason and the run goes on (``on_error="skip"``), or the units read before it are
  finished and the error is raised (``"stop"``). A unit whose format says :class:`NotAnImage` is ``skipped``.
- ``should_stop()`` is polled at every batch boundary: when it says so no more units are read, units not
  complete are dropped (a rerun does them) and the complete ones are written and recorded.
- Warnings (:func:`hpc_sr.apps.fits_io.warn`) of every thread are collected
  (:func:`~hpc_sr.apps.fits_io.collect_warnings`): passed to ``on_warning`` as they come (the runner's
  :class:`~hpc_sr.apps.inference.report.WarningTally`, which counts repeats), or kept and warned at the end
  of the run. The warnings module is one state for all threads, and astropy enters ``catch_warnings`` as
  it reads and writes: warnings of other threads vanish meanwhile, and two such blocks in two threads can
  leave the process with the wrong warning state for good. So the reads and writes of a format run one at a
  time unless it says ``concurrent_io = True`` (its code never touches the warnings state; numpy does).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpc_sr.apps import fits_io
from hpc_sr.apps.inference import pixels, publish
from hpc_sr.apps.inference.formats import FORMATS, ImageSet, InferenceOptions, NotAnImage, Results, Unit
from hpc_sr.apps.inference.ledger import Ledger
from hpc_sr.apps.inference.predict import Predictor
from hpc_sr.errors import DataError, HpcSrError

READERS = 2  # reader threads
READ_AHEAD = 6  # units read ahead of the one the model needs
MAX_OPEN = 64  # units waiting on partly filled queues before the oldest one's queues run anyway
WRITE_QUEUE = 16  # complete units waiting for the writer
COMMITS_AHEAD = 1  # batches waiting for the committer thread while it publishes one (durability="batch")
COMMIT_WAIT = 0.05  # seconds the writer waits for another unit before it hands over what it staged
WRITE_BYTES = 16 << 20  # ... and their pixels (LR, normalised, SR, sigma), at most (one unit always): the
# writer's backlog bounded in bytes whatever the unit size (1,024 catalog rows of 75 x 75 are ~140 MB)


@dataclass
class Outcome:
    """How one unit of this run ended."""

    unit: Unit
    status: str  # done | failed | skipped
    outputs: list[Path] = field(default_factory=list)
    reason: str = ""
    images: int = 0
    checksums: dict[Path, str] = field(default_factory=dict)  # sha256 of outputs as written (until recorded)


@dataclass
class _Open:
    """A unit read and being upscaled."""

    images: ImageSet
    prepared: list[pixels.Prepared]
    sr: list[np.ndarray | None]
    sigma: list[np.ndarray | None]
    waiting: int
    nbytes: int = 0  # its pixels when handed to the writer (WRITE_BYTES)


def _reason(unit: Unit, exc: BaseException) -> str:
    return str(exc) if isinstance(exc, HpcSrError) else f"{unit.src}: {type(exc).__name__}: {exc}"


class _Stop(Exception):
    """A bad unit under ``on_error="stop"``: finish what was read before it, then raise ``error``."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Engine:
    """See the module docstring."""

    def __init__(
        self,
        predict: Predictor,
        opts: InferenceOptions,
        ledger: Ledger,
        trained: dict[str, Any] | None = None,
        history: list[str] | None = None,
        on_warning: Callable[[str], None] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.predict, self.opts, self.ledger = predict, opts, ledger
        self.trained, self.history, self.on_warning = trained, list(history or []), on_warning
        self.provenance = dict(provenance or {})
        self.notes: list[str] = []  # the run's UpscaleWarning messages, from every thread (no on_warning)
        self._notes_lock = threading.Lock()
        self._io_lock = threading.Lock()  # reads and writes of formats without concurrent_io, one at a time
        self.formats: dict[str, Any] = {}
        self.outcomes: list[Outcome] = []
        self.stopped = False
        self._open: OrderedDict[str, _Open] = OrderedDict()
        self._queues: dict[tuple[int, int], list[tuple[_Open, int]]] = {}
        self._write_q: queue.Queue[_Open | None] = queue.Queue(WRITE_QUEUE)
        self._queued = threading.Condition()  # guards _queued_bytes: pixels handed to the writer
        self._queued_bytes = 0
        self._commit_q: queue.Queue[tuple[publish.Staged, list[Outcome]] | None] = queue.Queue(COMMITS_AHEAD)
        self._write_error: BaseException | None = None
        self._fatal = False  # the writer's own error (the ledger): nothing staged is published after it

    # ----------------------------------------------------------------------------------------------- run
    def run(self, units: list[Unit], should_stop: Callable[[], bool] = lambda: False) -> list[Outcome]:
        """Upscale ``units`` in order; the outcomes of this run (also in the ledger)."""
        self.formats = {name: FORMATS[name].cls() for name in sorted({u.format for u in units})}
        writer = threading.Thread(target=self._writer, name="hpc_sr-writer", daemon=True)
        writer.start()
        pool = ThreadPoolExecutor(READERS, thread_name_prefix="hpc_sr-reader")
        error: BaseException | None = None
        try:
            with fits_io.collect_warnings() as notes:
                try:
                    self._loop(pool, units, should_stop, notes)
                except _Stop as stop:
                    error = stop.error
                    with contextlib.suppress(_Stop):  # the units read before it are finished and written
                        self._run_all_queues()
                finally:
                    self._note(notes)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self._write_q.put(None)
            writer.join()
            if self.on_warning is None:
                for message in self.notes:  # now that no other thread can swallow them
                    fits_io.warn(message)
        error = error or self._write_error
        if error is not None:
            raise error
        return self.outcomes

    def _loop(
        self, pool: ThreadPoolExecutor, units: list[Unit], should_stop: Callable[[], bool], notes: list[str]
    ) -> None:
        for unit, future in self._read_ahead(pool, units):
            if should_stop() or self._write_error is not None:
                self.stopped = self._write_error is None
                return
            self._take(unit, future)
            while len(self._open) > MAX_OPEN:
                self._run_queues_of(next(iter(self._open.values())))
            self._note(notes)
            if should_stop():
                self.stopped = True
                return
        self._run_all_queues()

    def _note(self, messages: list[str]) -> None:
        """Keep (and pass on) warnings collected in a thread; empties ``messages``."""
        with self._notes_lock:
            taken, messages[:] = list(messages), []
            if self.on_warning is None:  # else not kept: a survey's run may warn once per image
                self.notes += taken
        if self.on_warning is not None:
            for message in taken:
                self.on_warning(message)

    def _io(self, fmt: Any) -> contextlib.AbstractContextManager[Any]:
        """The lock of a format whose reads and writes may not overlap (see the module docstring)."""
        return contextlib.nullcontext() if getattr(fmt, "concurrent_io", False) else self._io_lock

    def _read(self, unit: Unit) -> ImageSet:
        fmt = self.formats[unit.format]
        with fits_io.collect_warnings() as notes, self._io(fmt):
            try:
                return fmt.read(unit, self.opts)
            finally:
                self._note(notes)

    def _read_ahead(
        self, pool: ThreadPoolExecutor, units: list[Unit]
    ) -> Iterator[tuple[Unit, Future[ImageSet]]]:
        ahead: deque[tuple[Unit, Future[ImageSet]]] = deque()
        todo = iter(units)
        for unit in todo:
            ahead.append((unit, pool.submit(self._read, unit)))
            if len(ahead) > READ_AHEAD:
                yield ahead.popleft()
        while ahead:
            yield ahead.popleft()

    # ----------------------------------------------------------------------------------------------- units
    def _fail(self, unit: Unit, exc: BaseException, images: int = 0) -> None:
        skipped = isinstance(exc, NotAnImage)
        status = "skipped" if skipped else "failed"
        reason = _reason(unit, exc)
        self.ledger.record(unit.id, status, reason=reason, images=images)
        self.outcomes.append(Outcome(unit, status, reason=reason, images=images))
        if not skipped and self.opts.on_error == "stop":
            raise _Stop(exc if isinstance(exc, HpcSrError) else DataError(reason))

    def _take(self, unit: Unit, future: Future[ImageSet]) -> None:
        try:
            images = future.result()
            prepared = [
                pixels.prepare(img, label, flux, self.opts.normalize, self.trained)
                for img, label, flux in zip(images.images, images.labels, images.flux, strict=True)
            ]
            if not prepared:
                raise DataError(f"{unit.src}: holds no image")
            if all(p.x is None for p in prepared):
                raise DataError(f"{unit.src}: every pixel of every image is blank (NaN/inf)")
        except Exception as exc:  # noqa: BLE001 - any failure of one unit is that unit's
            self._fail(unit, exc)
            return
        n = len(prepared)
        todo = [i for i, p in enumerate(prepared) if p.x is not None]
        job = _Open(images, prepared, [None] * n, [None] * n, len(todo))
        self._open[unit.id] = job
        if self.opts.samples > 0:
            self._run_unit_samples(job, todo)
            return
        for i in todo:
            q = self._queues.setdefault(prepared[i].shape, [])
            q.append((job, i))
            if len(q) >= self.opts.batch_size:
                self._run_queue(prepared[i].shape)

    def _run_unit_samples(self, job: _Open, todo: list[int]) -> None:
        from hpc_sr.apps.inference.sampling import unit_seed

        by_shape: dict[tuple[int, int], list[int]] = {}
        for i in todo:
            by_shape.setdefault(job.prepared[i].shape, []).append(i)
        chunk = 0
        for shape in sorted(by_shape):
            idx = by_shape[shape]
            for lo in range(0, len(idx), self.opts.batch_size):
                part = [(job, i) for i in idx[lo : lo + self.opts.batch_size]]
                self._run_batch(part, seed=unit_seed(job.images.unit.id, chunk))
                chunk += 1

    # ----------------------------------------------------------------------------------------------- batches
    def _run_queue(self, shape: tuple[int, int]) -> None:
        part = self._queues.pop(shape, [])
        if part:
            self._run_batch(part)

    def _run_queues_of(self, job: _Open) -> None:
        for shape in sorted({p.shape for p in job.prepared if p.x is not None}):
            self._run_queue(shape)
        self._open.pop(job.images.unit.id, None)  # written or failed by now

    def _run_all_queues(self) -> None:
        for shape in sorted(self._queues):
            self._run_queue(shape)

    def _run_batch(self, part: list[tuple[_Open, int]], seed: int = 0) -> None:
        x = np.stack([job.prepared[i].x for job, i in part])  # type: ignore[misc]
        try:
            sr, sigma = self.predict(x, seed=seed)
        except HpcSrError:
            raise  # a setting that no batch can run with (samples of a deterministic model, ...)
        except Exception as exc:  # noqa: BLE001 - the model failing on a batch fails its units
            shape = tuple(x.shape[1:])
            why = f"the model failed on shape {shape} (try --tile or a smaller --batch-size): {exc}"
            for job in {id(j): j for j, _ in part}.values():  # each unit of the batch once, in order
                if self._open.pop(job.images.unit.id, None) is not None:
                    unit = job.images.unit
                    self._fail(unit, DataError(f"{unit.src}: {why}"), images=len(job.prepared))
            return
        for k, (job, i) in enumerate(part):
            job.sr[i] = sr[k]
            if sigma is not None:
                job.sigma[i] = sigma[k]
            job.waiting -= 1
            if job.waiting == 0 and self._open.pop(job.images.unit.id, None) is not None:
                self._hand_over(job)

    # ----------------------------------------------------------------------------------------------- writing
    def _hand_over(self, job: _Open) -> None:
        """Queue a complete unit for the writer, waiting while the units queued hold WRITE_BYTES of pixels."""
        normalised = [p.x for p, img in zip(job.prepared, job.images.images, strict=True) if p.x is not img]
        arrays = [*job.images.images, *normalised, *job.sr, *job.sigma]
        job.nbytes = sum(a.nbytes for a in arrays if a is not None)
        with self._queued:
            self._queued.wait_for(
                lambda: self._queued_bytes == 0 or self._queued_bytes + job.nbytes <= WRITE_BYTES
            )
            self._queued_bytes += job.nbytes
        self._write_q.put(job)

    def _written(self, job: _Open) -> None:
        """The writer is done with ``job``'s pixels."""
        with self._queued:
            self._queued_bytes -= job.nbytes
            self._queued.notify_all()

    def _results(self, job: _Open) -> Results:
        scale = int(self.opts.scale)
        prep = job.prepared
        images = [pixels.restore(job.sr[i], p, scale) for i, p in enumerate(prep)]
        sigma = None
        if self.opts.samples > 0:
            sigma = [pixels.restore_sigma(job.sigma[i], p, scale) for i, p in enumerate(prep)]
        notes = [pixels.note(p, scale) for p in prep]
        return Results(images, sigma, notes, list(self.history), dict(self.provenance))

    def _writer(self) -> None:
        batch = publish.Batch() if self.opts.durability == "batch" else None
        staged: list[Outcome] = []  # the units of the batch (done once committed): no pixels kept
        committer = None
        if batch is not None:  # publishes a batch and records it while the next one is staged
            committer = threading.Thread(
                target=self._committer, args=(batch,), name="hpc_sr-commit", daemon=True
            )
            committer.start()
        try:
            while True:
                try:  # units staged: hand them over when no other unit comes soon
                    job = self._write_q.get(timeout=COMMIT_WAIT if staged else None)
                except queue.Empty:
                    self._guarded(self._commit, batch, staged)
                    continue
                if job is None:
                    break
                if self._write_error is None:  # after an error nothing more is published (the queue drains)
                    self._guarded(self._publish, batch, job, staged)
                self._written(job)
                del job  # its pixels go now, not when the next unit comes
            if batch is not None and staged and not self._fatal:  # staged before a stop or a unit's error
                self._guarded(self._commit, batch, staged)
        finally:
            if committer is not None:
                self._commit_q.put(None)
                committer.join()
            if batch is not None:
                batch.close()  # anything not handed over is removed

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """A step of the writer, its warnings collected; an error of its own (the ledger failing) stops the
        run."""
        with fits_io.collect_warnings() as notes:
            try:
                step(*args)
            except BaseException as exc:  # noqa: BLE001 - raised by run() once the readers have stopped
                self._write_error, self._fatal = exc, True
            finally:
                self._note(notes)

    def _publish(self, batch: publish.Batch | None, job: _Open, staged: list[Outcome]) -> None:
        unit, n = job.images.unit, len(job.prepared)
        fmt = self.formats[unit.format]
        try:
            results = self._results(job)
            one_unit = batch.unit() if batch is not None else contextlib.nullcontext()
            with self._io(fmt), publish.staging(batch), publish.checksums() as sums, one_unit:
                outputs = fmt.write(job.images, results, self.opts)
        except Exception as exc:  # noqa: BLE001 - a unit that cannot be written is that unit's failure
            self._unit_failed(unit, n, exc)
            return
        if batch is None:  # durability="file": each output was published on its own; record the unit now
            self.ledger.record(unit.id, "done", outputs=outputs, images=n, checksums=sums)
            self.outcomes.append(Outcome(unit, "done", list(outputs), images=n))
            return
        outcome = Outcome(unit, "done", list(outputs), images=n, checksums=sums)
        staged.append(outcome)  # written to temporary names
        if batch.full(len(staged)) or (self._write_q.empty() and self._commit_q.empty()):
            self._commit(batch, staged)

    def _commit(self, batch: publish.Batch, staged: list[Outcome]) -> None:
        """Hand the staged units to the committer (waits while it holds COMMITS_AHEAD batches)."""
        units, staged[:] = list(staged), []
        self._commit_q.put((batch.take(), units))

    def _committer(self, batch: publish.Batch) -> None:
        while (item := self._commit_q.get()) is not None:
            taken, units = item
            if not self._fatal:  # after the ledger failed nothing more is published
                self._guarded(self._publish_taken, batch, taken, units)
            taken.discard()  # what was not published (nothing, unless it failed)

    def _publish_taken(self, batch: publish.Batch, taken: publish.Staged, units: list[Outcome]) -> None:
        """Make the outputs durable and visible together, then record their units (one append)."""
        try:
            batch.publish(taken)
        except Exception as exc:  # noqa: BLE001 - outputs that cannot be made durable: their units failed
            for o in units:
                self._unit_failed(o.unit, o.images, exc)
            return
        sums = {path: digest for o in units for path, digest in o.checksums.items()}
        self.ledger.record_many([(o.unit.id, "done", o.outputs, "", o.images) for o in units], sums)
        for o in units:
            o.checksums = {}  # recorded: not kept for the run's length
        self.outcomes += units

    def _unit_failed(self, unit: Unit, images: int, exc: BaseException) -> None:
        reason = _reason(unit, exc)
        self.ledger.record(unit.id, "failed", reason=reason, images=images)
        self.outcomes.append(Outcome(unit, "failed", reason=reason, images=images))
        if self.opts.on_error == "stop":
            self._write_error = exc if isinstance(exc, HpcSrError) else DataError(reason)
