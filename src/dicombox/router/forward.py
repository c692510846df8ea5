"""Forwarding: rules route every received instance to destinations through durable queues.

Routing happens in :meth:`Forwarding.on_stored`, inside the transaction
that commits the instance, so an acknowledged instance always has its queue
rows (one per destination, table ``forward_queue``, see :mod:`.queue`).

Each destination has its own pool of ``max_associations`` senders
(:class:`Sender`), so a slow or unreachable destination only ever occupies
its own threads.  A sender claims a batch of due rows, sends them over one
association (reused while more work fits its presentation contexts), and
writes the results back.  Failures back off exponentially with jitter up to
``forwarding.retry_max``: per row for failure statuses, per destination for
association failures (its senders pause, the other destinations go on).
Senders sleep until new rows wake them (:meth:`Worker.wake`) or the next
retry is due.

Failure policy: a row claimed by a sender that dies with the process returns
to pending at the next start; an unexpected exception in a sender kills that
worker, which makes the router unhealthy so systemd restarts it.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from pynetdicom import _config

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
#: How often undelivered rows are checked against forwarding.max_age_hours.
EXPIRE_INTERVAL = 30.0


def backoff(attempts: int, initial: float, ceiling: float, rng=random) -> float:
    """Exponential backoff with jitter: half the delay fixed, half random."""
    delay = min(ceiling, initial * (2 ** max(0, attempts - 1)))
    return delay / 2 + rng.uniform(0, delay / 2)


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
        self.senders = [Sender(self, i) for i in range(destination.max_associations)]

    def wake(self) -> None:
        for s in self.senders:
            s.wake()

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
        return any(s.session.is_open() for s in self.senders if s is not sender)

    def peek(self) -> list[Item]:
        """Due rows (not claimed) whose contexts fit one association: what to propose."""
        found = queue.candidates(self.fwd.store.db.read_conn(), self.dest.name, time.time(),
                                 self.dest.batch_size)
        batch: list[Item] = []
        contexts: set = set()
        for item in found:
            more = set(needed_contexts(item, self.syntaxes, self.dest.offer_stored)) - contexts
            if len(contexts) + len(more) > MAX_CONTEXTS:
                break
            contexts |= more
            batch.append(item)
        return batch

    def claim(self, proposed: set) -> tuple[list[Item], bool]:
        """Take up to ``batch_size`` due rows the association's contexts cover.

        Returns the claimed rows and whether any row was due at all.
        """
        with self.fwd.store.db.write() as conn:
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

    def step(self) -> float:
        pool = self.pool
        if not pool.dest.enabled:
            return 3600.0
        wait = max(pool.paused_until, self._paused_until) - time.time()
        if wait > 0:
            self.session.close()
            return wait
        if not self.session.usable():
            due = pool.peek()
            if not due:
                self._idle_since = None
                return pool.idle_delay()
            if not self._open(due):
                return 0.0
        batch, any_due = pool.claim(self.session.proposed)
        if not batch:
            if any_due or self.session.all_rejected:
                # Due work this association was not negotiated for: start afresh.
                self.session.close()
                return 0.0
            return self._idle()
        self._idle_since = None
        self._send(batch)
        if self.session.all_rejected:
            self.session.close()
        return 0.0

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
        pool, fwd = self.pool, self.pool.fwd
        pending: list[Outcome] = []
        last_flush = time.monotonic()
        delivered = 0
        for n, item in enumerate(batch):
            if self.stopping.is_set():
                pending += [Outcome(it, "release") for it in batch[n:]]
                break
            attempt = self.session.send(item, fwd.store.path_of(item.path))
            pending.append(self._outcome(item, attempt.event, attempt.error,
                                         attempt.sent_sop_instance_uid))
            delivered += attempt.event == DELIVERED
            if attempt.event == DEAD:
                LOGGER.error("%s -> %s: dead-letter: %s", item.sop_instance_uid,
                             pool.dest.name, attempt.error)
            elif attempt.event != DELIVERED:
                LOGGER.warning("%s -> %s: %s", item.sop_instance_uid, pool.dest.name,
                               attempt.error)
            if attempt.broken:
                self.session.abort()
                pending += [Outcome(it, "release") for it in batch[n + 1:]]
                self._flush(pending, success=delivered > 0, error=attempt.error)
                self._association_failed(attempt.error, noted=True)
                return
            if len(pending) >= FLUSH_EVERY or time.monotonic() - last_flush > FLUSH_SECONDS:
                self._flush(pending, success=delivered > 0)
                pending, delivered = [], 0
                last_flush = time.monotonic()
        self._flush(pending, success=delivered > 0)
        if self.stopping.is_set():
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
            self._flush([], error=reason)

    def _flush(self, outcomes: list[Outcome], success: bool = False,
               error: str | None = None) -> None:
        if not outcomes and not success and error is None:
            return
        now = time.time()
        with self.pool.fwd.store.db.write() as conn:
            queue.record(conn, outcomes, now)
            if success:
                queue.note_destination(conn, self.pool.dest.name, now)
            if error is not None:
                queue.note_destination(conn, self.pool.dest.name, now, error)

    def stop(self, timeout: float | None = 10) -> None:
        super().stop(timeout)
        if not self.is_alive():
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
        # Send spooled files in chunks, never decoding them (process-wide; the
        # router sends only files).
        _config.STORE_SEND_CHUNKED_DATASET = True
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
