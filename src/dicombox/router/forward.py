"""Forwarding: rules route every received instance to destinations through durable queues.

Routing happens in :meth:`Forwarding.on_stored`, inside the transaction
that commits the instance, so an acknowledged instance always has its queue
rows (one per destination, table ``forward_queue``, see :mod:`.queue`).

Each destination has its own pool of ``max_associations`` senders
(:class:`Sender`), so a slow or unreachable destination only ever occupies
its own threads.  A sender claims a batch of due rows, sends them over one
association (reused while more work fits its presentation contexts), and
writes the results back with its next claim (:class:`Results`).  Failures
back off exponentially with jitter up to ``forwarding.retry_max``: per row
for failure statuses, per destination for association failures (its senders
pause, the other destinations go on).  Idle senders sleep until a queued row
wakes one of them (:meth:`DestinationPool.wake`) or the next retry is due.

Failure policy: a row claimed by a sender that dies with the process returns
to pending at the next start; an unexpected exception in a sender kills that
worker, which makes the router unhealthy so systemd restarts it.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from ..lifecycle import Worker
from . import queue
from .cleanup import Cleaner, requires_commitment
from .queue import Item, Outcome
from .rules import RuleSet
from .sender import (
    DEAD,
    DELIVERED,
    MAX_CONTEXTS,
    AssociationFailed,
    Session,
    needed_contexts,
)
from .service import RouterComponent

LOGGER = logging.getLogger("dicombox.forward")

#: Results are written back at least this often while a batch is sent.
FLUSH_EVERY = 25
FLUSH_SECONDS = 1.0
#: An open association waits this long for more work before it is released.
LINGER_SECONDS = 1.0
#: How long results wait for the next claim after a batch that took every due row.
RESULTS_WAIT = 0.02
#: How often undelivered rows are checked against forwarding.max_age_hours.
EXPIRE_INTERVAL = 30.0


def backoff(attempts: int, initial: float, ceiling: float, rng=random) -> float:
    """Exponential backoff with jitter: half the delay fixed, half random."""
    delay = min(ceiling, initial * (2 ** max(0, attempts - 1)))
    return delay / 2 + rng.uniform(0, delay / 2)


class Results:
    """Attempt results a sender has not written back yet.

    They are written in the transaction of the sender's next claim (at
    least every ``FLUSH_EVERY`` attempts or ``FLUSH_SECONDS``, at most
    ``RESULTS_WAIT`` after a batch that took every due row, before a longer
    wait and when the sender stops), and, like claims, committed without a
    sync (``Database.write(durable=False)``).  Why that keeps every promise:

    - a power cut can only undo the latest of these commits (the WAL is
      replayed up to the last intact commit, in order): their rows are
      ``sending`` again, go back to pending at start (``recover``) and are
      sent again.  At least once, as documented; nothing is lost, because
      no row ever leaves the queue without being delivered;
    - whatever acts on a delivery commits with a sync first, which makes
      every earlier commit durable too: spool cleanup removes a file only
      after its (synced) deletion of the index row, and a storage
      commitment verdict is committed (synced) before it is reported.  So
      no removal or report can outlive the delivery it relied on;
    - a lost failure or dead-letter result only means one more attempt.
    """

    def __init__(self):
        self.outcomes: list[Outcome] = []
        self.success = False           # something was delivered: the destination works
        self.error: str | None = None  # the destination's last error, if any

    def __bool__(self) -> bool:
        return bool(self.outcomes) or self.success or self.error is not None

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.success = self.success or outcome.event == DELIVERED

    def write(self, conn, destination: str) -> None:
        if not self:
            return
        now = time.time()
        queue.record(conn, self.outcomes, now)
        if self.success:
            queue.note_destination(conn, destination, now)
        if self.error is not None:
            queue.note_destination(conn, destination, now, self.error)
        self.outcomes, self.success, self.error = [], False, None


class DestinationPool:
    """The senders of one destination and the state they share."""

    def __init__(self, forwarding: Forwarding, destination):
        self.fwd = forwarding
        self.dest = destination
        self.syntaxes = destination.transfer_syntax_uids()
        self.lock = threading.Lock()
        self.failures = 0
        self.paused_until = 0.0
        self.last_error = ""
        #: :meth:`wake` calls, and those that woke an idle sender: see :meth:`unserved`.
        self.queued = 0
        self.woken = 0
        self.senders = [Sender(self, i) for i in range(destination.max_associations)]

    def wake(self) -> None:
        """Rows were queued (called inside the transaction that adds them): wake
        one idle sender, first one with results to write, then one holding an
        association.

        Waking every sender would have them all claim at once and all but one
        find nothing: a write transaction each, per received instance.  No
        wake-up is lost.  A sender reads :meth:`unserved` before it looks for
        rows (:meth:`peek`, :meth:`claim`, both under the database's write
        lock, so it sees every row whose wake-up came before), and again
        after it marked itself idle (:meth:`Sender.idle_for`): if the count
        changed, it looks again instead of waiting.  Here the count goes up
        *before* the idle senders are looked at, and comes back down only
        for a wake-up that did wake one, which then claims the rows itself;
        so a sender either sees the wake-up counted, or was seen idle.
        """
        with self.lock:
            self.queued += 1
            idle = [s for s in self.senders if s.idle]
            if idle:
                # Results to write first (one transaction for both), then an association.
                min(idle, key=lambda s: (not s.results,
                                         not s.session.holds_association())).wake()
                self.woken += 1

    def unserved(self) -> int:
        """Wake-ups so far that found no idle sender (and a moment, those in progress)."""
        with self.lock:
            return self.queued - self.woken

    def association_failed(self, reason: str) -> float:
        """The destination cannot be reached: every sender of it pauses."""
        cfg = self.fwd.config.forwarding
        with self.lock:
            self.failures += 1
            delay = backoff(self.failures, cfg.retry_initial, cfg.retry_max)
            self.paused_until = max(self.paused_until, time.time() + delay)
            self.last_error = reason
        return delay

    def association_ok(self) -> None:
        with self.lock:
            self.failures = 0
            self.paused_until = 0.0

    def others_connected(self, sender: Sender) -> bool:
        return any(s.session.holds_association() for s in self.senders if s is not sender)

    def peek(self, results: Results) -> list[Item]:
        """Due rows (not claimed) whose contexts fit one association: what to propose.

        Under the write lock (with ``results`` written): see :meth:`wake`.
        """
        with self.fwd.store.db.write(durable=False) as conn:
            results.write(conn, self.dest.name)
            found = queue.candidates(conn, self.dest.name, time.time(), self.dest.batch_size)
        batch: list[Item] = []
        contexts: set = set()
        for item in found:
            more = set(needed_contexts(item, self.syntaxes, self.dest.offer_stored)) - contexts
            if len(contexts) + len(more) > MAX_CONTEXTS:
                break
            contexts |= more
            batch.append(item)
        return batch

    def claim(self, proposed: set, results: Results) -> tuple[list[Item], bool]:
        """Write ``results`` and take up to ``batch_size`` due rows the
        association's contexts cover, in one transaction.

        Returns the claimed rows and whether any row was due at all.
        """
        with self.fwd.store.db.write(durable=False) as conn:
            results.write(conn, self.dest.name)
            found = queue.candidates(conn, self.dest.name, time.time(), self.dest.batch_size)
            batch = [it for it in found if set(needed_contexts(
                it, self.syntaxes, self.dest.offer_stored)) <= proposed]
            queue.mark_claimed(conn, batch)
        return batch, bool(found)

    def idle_delay(self) -> float:
        poll = self.fwd.config.forwarding.idle_poll
        due = self.fwd.store.db.query_one(
            "SELECT MIN(next_attempt_at) FROM forward_queue "
            f"WHERE destination = ? AND state IN {queue.sources('claim')}",
            (self.dest.name,))[0]
        if due is None:
            return poll
        return max(0.01, min(poll, due - time.time()))

    def snapshot(self) -> dict:
        with self.lock:
            return {"failures": self.failures,
                    "paused_for": max(0.0, self.paused_until - time.time()),
                    "last_error": self.last_error}


class Sender(Worker):
    """One association's worth of sending for one destination.

    The association is opened *before* any row is claimed (its contexts
    proposed for the rows then due), so rows never wait on a slow or refused
    association: they stay pending for the other senders.
    """

    def __init__(self, pool: DestinationPool, index: int):
        super().__init__(f"forward-{pool.dest.name}-{index}")
        self.pool = pool
        fwd = pool.fwd
        self.session = Session(pool.dest, fwd.config.router.ae_title, fwd.config.network.max_pdu,
                               fwd.store.tmp_dir)
        self._idle_since: float | None = None
        #: This sender's own back-off, when the destination takes fewer associations.
        self._failures = 0
        self._paused_until = 0.0
        #: Results of the last attempts, written with the next claim or before a wait.
        self.results = Results()
        #: Waiting for rows (not paused, not sending): :meth:`DestinationPool.wake`
        #: wakes such a sender.
        self.idle = False

    def step(self) -> float:
        self.idle = False
        pool = self.pool
        queued = pool.unserved()
        if not pool.dest.enabled:
            self._flush()
            return 3600.0
        wait = max(pool.paused_until, self._paused_until) - time.time()
        if wait > 0:
            self._flush()
            self.session.close()
            return wait
        if not self.session.usable():
            due = pool.peek(self.results)
            if not due:
                self._idle_since = None
                return self.idle_for(queued, pool.idle_delay)
            if not self._open(due):
                return 0.0
        batch, any_due = pool.claim(self.session.proposed, self.results)
        if not batch:
            if any_due or self.session.all_rejected:
                # Due work this association was not negotiated for: start afresh.
                self.session.close()
                return 0.0
            return self.idle_for(queued, self._idle)
        self._idle_since = None
        self._send(batch)
        if self.session.all_rejected:
            self.session.close()
            return 0.0
        if (self.results and len(batch) < pool.dest.batch_size
                and pool.unserved() == queued and not self.stopping.is_set()):
            # Everything due was in this batch and nothing was queued since (for
            # this sender; another one woken claims its rows itself): the
            # next instance, if it comes at once, takes the results along with its
            # claim (one transaction instead of two while instances trickle in).
            return self.idle_for(queued, lambda: RESULTS_WAIT)
        return 0.0

    def idle_for(self, queued: int, delay) -> float:
        """Wait ``delay()`` for rows, unless some were queued for no idle sender
        since this step began looking (``queued`` was ``pool.unserved()`` then)."""
        wait = delay()             # may release a lingering association: not yet idle
        self.idle = True
        if self.pool.unserved() != queued:
            self.idle = False
            return 0.0
        return wait

    def _open(self, due: list[Item]) -> bool:
        pool = self.pool
        try:
            self.session.open(due)
        except AssociationFailed as exc:
            self._association_failed(str(exc))
            return False
        except (OSError, RuntimeError, ValueError) as exc:
            self._association_failed(f"cannot associate: {exc}")
            return False
        pool.association_ok()
        self._failures, self._paused_until = 0, 0.0
        return True

    def _idle(self) -> float:
        """Keep an open association a moment for more work, then release it."""
        if self.session.is_open():
            now = time.monotonic()
            if self._idle_since is None:
                self._idle_since = now
            left = LINGER_SECONDS - (now - self._idle_since)
            if left > 0:
                return min(left, self.pool.idle_delay())
            self.session.close()
        self._idle_since = None
        return self.pool.idle_delay()

    def _send(self, batch: list[Item]) -> None:
        """Send ``batch``; the results of its last attempts stay in
        :attr:`results` for the next claim's transaction."""
        pool, fwd = self.pool, self.pool.fwd
        results = self.results
        last_flush = time.monotonic()
        for n, item in enumerate(batch):
            if self.stopping.is_set():
                results.outcomes += [Outcome(it, "release") for it in batch[n:]]
                break
            attempt = self.session.send(item, fwd.store.path_of(item.path))
            results.add(self._outcome(item, attempt.event, attempt.error,
                                      attempt.sent_sop_instance_uid))
            if attempt.event == DEAD:
                LOGGER.error("%s -> %s: dead-letter: %s", item.sop_instance_uid,
                             pool.dest.name, attempt.error)
            elif attempt.event != DELIVERED:
                LOGGER.warning("%s -> %s: %s", item.sop_instance_uid, pool.dest.name,
                               attempt.error)
            if attempt.broken:
                self.session.abort()
                results.outcomes += [Outcome(it, "release") for it in batch[n + 1:]]
                results.error = attempt.error
                self._flush()
                self._association_failed(attempt.error, noted=True)
                return
            if (len(results.outcomes) >= FLUSH_EVERY
                    or time.monotonic() - last_flush > FLUSH_SECONDS):
                self._flush()
                last_flush = time.monotonic()
        if self.stopping.is_set():
            self._flush()
            self.session.close()

    def _outcome(self, item: Item, event: str, error: str, sent_uid: str = "") -> Outcome:
        cfg = self.pool.fwd.config.forwarding
        now = time.time()
        if event == "fail":
            if now - item.created_at > cfg.max_age_hours * 3600:
                return Outcome(item, "expire", f"not delivered within {cfg.max_age_hours:g} h;"
                                               f" last error: {error}")
            delay = backoff(item.attempts + 1, cfg.retry_initial, cfg.retry_max)
            return Outcome(item, event, error, next_attempt_at=now + delay)
        return Outcome(item, event, error, sent_uid)

    def _association_failed(self, reason: str, noted: bool = False) -> None:
        """No association: unclaimed rows wait, untouched, for this or another sender."""
        pool = self.pool
        cfg = pool.fwd.config.forwarding
        if pool.others_connected(self):
            # The destination is up but takes fewer associations than configured:
            # only this sender backs off.
            self._failures += 1
            delay = backoff(self._failures, cfg.retry_initial, cfg.retry_max)
            self._paused_until = time.time() + delay
            LOGGER.info("%s: another association refused (%s); this sender waits %.1f s",
                        pool.dest.name, reason, delay)
            return
        delay = pool.association_failed(reason)
        LOGGER.warning("%s: %s; next try in %.1f s", pool.dest.name, reason, delay)
        if not noted:
            self.results.error = reason
            self._flush()

    def _flush(self) -> None:
        """Write :attr:`results` back now (before waiting, on its own)."""
        if self.results:
            with self.pool.fwd.store.db.write(durable=False) as conn:
                self.results.write(conn, self.pool.dest.name)

    def stop(self, timeout: float | None = 10) -> None:
        super().stop(timeout)
        if not self.is_alive():
            self._flush()
            self.session.close()


class Expirer(Worker):
    """Moves rows older than ``forwarding.max_age_hours`` to dead-letter."""

    def __init__(self, forwarding: Forwarding):
        super().__init__("forward-expirer")
        self.fwd = forwarding

    def step(self) -> float:
        cfg = self.fwd.config.forwarding
        with self.fwd.store.db.write() as conn:
            n = queue.expire(conn, cfg.max_age_hours * 3600, time.time())
        if n:
            LOGGER.error("%d instance(s) not delivered within %g h moved to dead-letter "
                         "(`dicombox queue retry --dead` retries them)", n, cfg.max_age_hours)
        return min(EXPIRE_INTERVAL, max(0.5, cfg.max_age_hours * 3600 / 4))


class Forwarding(RouterComponent):
    """The router component that routes, queues and forwards."""

    name = "forwarding"
    migrations = queue.MIGRATIONS

    def __init__(self, service):
        super().__init__(service)
        self.config = service.config
        self.store = service.store
        self.rules = RuleSet.from_config(self.config)
        now = time.time()
        with self.store.db.write() as conn:
            recovered = queue.recover(conn)
            orphaned = queue.orphan(conn, [d.name for d in self.config.destinations], now)
        if recovered:
            LOGGER.warning("%d forwarding(s) interrupted by the last stop will be resent",
                           recovered)
        if orphaned:
            LOGGER.error("%d queued instance(s) are for destinations no longer configured; "
                         "moved to dead-letter", orphaned)
        self.pools = {d.name: DestinationPool(self, d) for d in self.config.destinations}
        self.cleaner = Cleaner(self.store, self.config.cleanup,
                               requires_commitment(self.config))
        self.expirer = Expirer(self)

    def on_stored(self, conn, instance_id: int, replaced: bool, info) -> None:
        routes = self.rules.route(vars(info))
        queued = queue.enqueue(conn, instance_id, info.sop_instance_uid, info.sha256, routes,
                               replaced, time.time())
        # The senders' claim takes the same database lock, so they see these
        # rows as soon as this transaction commits.
        for name in queued:
            pool = self.pools.get(name)
            if pool is not None:
                pool.wake()

    def workers(self) -> list[Worker]:
        senders = [s for p in self.pools.values() for s in p.senders]
        return [*senders, self.expirer, self.cleaner]

    def snapshot(self) -> dict:
        now = time.time()
        counts = queue.summary(self.store.db.read_conn(), now)
        destinations = {}
        for name, pool in self.pools.items():
            destinations[name] = {**counts.get(name, {}), **pool.snapshot()}
        return {"destinations": destinations, "cleanup": self.cleaner.counters()}

    def stop(self) -> None:
        for pool in self.pools.values():
            for s in pool.senders:
                if s.is_alive():
                    s.session.abort()   # its thread did not stop in time
                else:
                    s.session.close()


# -- the conformance statement ------------------------------------------------------

def _proposed_contexts() -> str:
    from dataclasses import fields

    from ..config import Destination
    from ..conformance import md_table
    default = next(f.default for f in fields(Destination) if f.name == "transfer_syntaxes")
    rows = [["Every Storage SOP Class of Table 2 (and `storage.private_sop_classes`) that is "
             "forwarded", "see Table 2",
             "the syntax the instance is stored in (unless `offer_stored = false`)", "SCU",
             "None"],
            ["", "", "then each of the destination's `transfer_syntaxes`, one context per "
             f"syntax (default: {', '.join(default)})", "SCU", "None"]]
    return md_table(["Abstract Syntax", "UID", "Transfer Syntax (one context each)", "Role",
                     "Ext. Neg."], rows)


def _store_statuses() -> str:
    from ..conformance import md_table
    from .sender import STATUS_POLICY
    what = {"deliver": "delivered", "fail": "retried with back-off (dead-letter after "
                                            "`forwarding.max_age_hours`)",
            "reject": "dead-letter at once, with the status as the reason"}
    rows = []
    for lo, hi, action, meaning in STATUS_POLICY:
        code = "any other" if (lo, hi) == (0x0000, 0xFFFF) else (
            f"{lo:04X}" if lo == hi else f"{lo:04X}-{hi:04X}")
        rows.append([code, meaning, what[action]])
    return md_table(["Status", "Meaning", "What the queue does"], rows)


def _queue_transitions() -> str:
    from ..conformance import md_table
    why = {
        "queue": "the instance is received (or replaced by new content)",
        "claim": "a sender of the destination takes it into an association",
        "release": "the association ended before it was attempted",
        "deliver": "Success or Warning status (or Duplicate SOP Instance)",
        "fail": "failure status that may pass, or no association / network error",
        "reject": "a status or negotiation result that will never succeed",
        "expire": "not delivered `forwarding.max_age_hours` after it was queued",
        "recover": "start-up: the process stopped while it was being sent",
        "retry-now": "`dicombox queue retry`",
        "revive": "`dicombox queue retry --dead`",
        "orphan": "start-up: its destination is no longer configured",
    }
    rows = [[event, ", ".join(src), dst, why[event]]
            for event, (src, dst) in queue.TRANSITIONS.items()]
    return md_table(["Event", "From", "To", "When"], rows)


def conformance_tables() -> dict:
    return {"forward-contexts": _proposed_contexts, "forward-statuses": _store_statuses,
            "forward-transitions": _queue_transitions,
            "forward-rule-conditions": _rule_conditions}


def _rule_conditions() -> str:
    from ..conformance import md_table
    from .rules import CONDITIONS
    rows = [[f"`{name}`", label, "equals one of the listed values" if kind == "one-of"
             else "regular expression found in the value (`re.search`)"]
            for name, _attr, label, kind in CONDITIONS]
    return md_table(["Rule key", "Attribute", "Matches when"], rows)
