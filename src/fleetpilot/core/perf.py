"""The performance model: continuous batching, as vLLM and TGI schedule it.

One model, three users (DESIGN.md): the router *predicts* with :func:`predict`, the emulator
and the simulator *execute* :class:`BatchEngine` (in real and in virtual time).  Because the
prediction and the execution share the step-time curve and the admission rule, a live p99
over emulated replicas and a simulated p99 can be compared.

Execution rule (iteration-level scheduling): at the start of every step the engine admits
waiting sequences, oldest first, while the batch has fewer than ``max_batch`` sequences.  The
step lasts ``step_time(batch)`` plus the prefill of the sequences admitted on it
(``prompt_tokens / prefill_rate``).  At its end every sequence in the batch has one more
token; a newly admitted sequence's first token is the one its prefill step produced.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from fleetpilot.core.model import Profile, Replica, ReplicaLoad, interpolate_step


def step_time(profile: Profile, batch: int) -> float:
    """Seconds per decode iteration at ``batch`` running sequences."""
    table = profile.step_table
    if 0 < batch < len(table):
        return table[batch]
    return interpolate_step(profile.step_points, batch)


def throughput(profile: Profile, batch: int) -> float:
    """Output tokens per second of a replica running ``batch`` sequences."""
    b = min(max(batch, 1), profile.max_batch)
    return b / step_time(profile, b)


class Prediction(NamedTuple):
    ttft: float
    e2e: float
    batch: int  # batch size the request is predicted to decode in


def predict(profile: Profile, load: ReplicaLoad, prompt_tokens: int, max_tokens: int) -> Prediction:
    """Expected TTFT and end-to-end latency of a new request on a replica with ``load``.

    With a free KV slot the request joins the next step: it waits, on average, half of the
    step in progress, then one step with its own prefill and that of everything queued ahead.
    With the batch full it first waits for enough sequences to finish; at full batch slots
    free at ``max_batch`` per mean remaining length, which is the estimate used.
    """
    ttft, batch = ttft_and_batch(profile, load, prompt_tokens)
    e2e = ttft + max(max_tokens - 1, 0) * step_time(profile, batch)
    return Prediction(ttft=ttft, e2e=e2e, batch=batch)


def ttft_and_batch(profile: Profile, load: ReplicaLoad, prompt_tokens: int) -> tuple[float, int]:
    """:func:`predict`'s TTFT and the batch the request will decode in, with nothing
    allocated but the answer: the router calls it for every candidate on every request."""
    running, waiting = load.running, load.waiting
    ahead = running + waiting
    cap = profile.max_batch
    steps = profile.step_table
    prefill = (prompt_tokens + load.pending_prefill_tokens) / profile.prefill_rate
    half_step = 0.5 * steps[running] if running else 0.0
    if ahead < cap:
        return half_step + steps[ahead + 1] + prefill, ahead + 1
    must_finish = ahead + 1 - cap
    mean_remaining = load.remaining_decode_tokens / ahead if ahead else 0.0
    full = steps[cap]
    return half_step + (must_finish * mean_remaining / cap) * full + full + prefill, cap


def marginal_cost(replica: Replica, prompt_tokens: int, max_tokens: int, batch: int) -> float:
    """Dollars of replica time this request uses at ``batch``: its share of each decode step
    plus the whole replica for its prefill.  Fuller batches make each token cheaper, so this
    favours packing work onto replicas that are already busy, as long as deadlines hold."""
    profile = replica.profile
    b = min(max(batch, 1), profile.max_batch)
    seconds = max_tokens * step_time(profile, b) / b + prompt_tokens / profile.prefill_rate
    return replica.offering.price_per_hour / 3600.0 * seconds


# ---------------------------------------------------------------------------------------------
# Execution


@dataclass(slots=True, eq=False)
class Sequence:
    """One request inside a :class:`BatchEngine`.

    ``generated`` is exact whenever the engine hands the sequence out (``end_step``,
    ``finish_step``, ``sequences``); while it runs unseen the engine counts its tokens as
    step ends since ``base``, so a step costs O(1) however full the batch is.
    """

    id: str
    prompt_tokens: int
    max_tokens: int
    generated: int = 0
    base: int = field(default=0, repr=False)  # engine's step-end count when it had 0 tokens

    @property
    def done(self) -> bool:
        return self.generated >= self.max_tokens


class Step(NamedTuple):
    """A step the engine has begun: how long it lasts and whom it admitted (a tuple: one is
    made per engine step, the hottest allocation of a simulation)."""

    duration: float
    batch: int
    admitted: tuple[str, ...]


@dataclass(slots=True)
class BatchEngine:
    """Continuous batching on one replica, without a clock.

    The caller drives it: ``begin_step()`` says how long the next step takes, the caller lets
    that much (real or virtual) time pass, then ``end_step()`` hands out one token to every
    sequence in the batch and returns them (the emulator streams each one).  A caller that
    only needs first tokens and completions (the simulator) calls ``finish_step()`` instead,
    which returns only the sequences that finished, and jumps over runs of identical steps
    with ``fast_forward``.  ``slowdown`` multiplies step durations (fault injection and
    stragglers).

    Bookkeeping: ``ends`` counts step ends; a running sequence has ``ends - base`` tokens and
    sits in a heap by the step end that gives it its last token, so the next completion is
    known without looking at the batch.
    """

    profile: Profile
    slowdown: float = 1.0
    waiting: deque[Sequence] = field(default_factory=deque)
    running: dict[Sequence, None] = field(default_factory=dict)  # batch order (admission)
    ends: int = 0
    _finishing: list[tuple[int, int, Sequence]] = field(default_factory=list)  # heap
    _admissions: int = 0  # tie-break in the heap: batch order
    _pending: int = 0  # prompt tokens of waiting sequences
    _owed: int = 0  # output tokens still owed to running and waiting sequences

    def add(self, seq: Sequence) -> None:
        if seq.max_tokens < 1:
            raise ValueError("a sequence must ask for at least one token")
        self.waiting.append(seq)
        self._pending += seq.prompt_tokens
        self._owed += seq.max_tokens - seq.generated

    def cancel(self, seq_id: str) -> bool:
        for seq in self.running:
            if seq.id == seq_id:
                seq.generated = self.ends - seq.base
                del self.running[seq]  # its heap entry is dropped when it surfaces
                self._owed -= seq.max_tokens - seq.generated
                return True
        for seq in self.waiting:
            if seq.id == seq_id:
                self.waiting.remove(seq)
                self._pending -= seq.prompt_tokens
                self._owed -= seq.max_tokens - seq.generated
                return True
        return False

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def begin_step(self) -> Step:
        running, waiting, profile = self.running, self.waiting, self.profile
        cap = profile.max_batch
        if not waiting or len(running) >= cap:
            batch = len(running)
            duration = step_time(profile, batch) * self.slowdown if batch else 0.0
            return Step(duration, batch, ())
        ids: list[str] = []
        tokens = 0
        ends, heap, n = self.ends, self._finishing, self._admissions
        while waiting and len(running) < cap:
            seq = waiting.popleft()
            seq.base = base = ends - seq.generated
            running[seq] = None
            n += 1
            heapq.heappush(heap, (base + seq.max_tokens, n, seq))
            ids.append(seq.id)
            tokens += seq.prompt_tokens
        self._admissions = n
        self._pending -= tokens
        batch = len(running)
        duration = (step_time(profile, batch) + tokens / profile.prefill_rate) * self.slowdown
        return Step(duration, batch, tuple(ids))

    def end_step(self) -> list[Sequence]:
        """Give every running sequence its next token; finished ones leave the batch.

        Returns the sequences that got a token, in batch order (the caller owns the list).
        """
        stepped = list(self.running)
        ends = self.ends + 1
        for seq in stepped:
            seq.generated = ends - seq.base
        self.finish_step()
        return stepped

    def finish_step(self) -> list[Sequence]:
        """``end_step`` for callers that only need completions: the sequences that got their
        last token, in batch order."""
        self.ends += 1
        self._owed -= len(self.running)
        return self._pop_finished()

    def _pop_finished(self) -> list[Sequence]:
        heap, running, ends = self._finishing, self.running, self.ends
        done: list[Sequence] = []
        while heap and heap[0][0] <= ends:
            _, _, seq = heapq.heappop(heap)
            if seq in running and seq.base + seq.max_tokens <= ends:
                del running[seq]
                seq.generated = seq.max_tokens
                done.append(seq)
        return done

    def steps_to_finish(self) -> int:
        """Step ends, the one in progress first, until a running sequence gets its last token
        (0 when nothing runs)."""
        heap, running = self._finishing, self.running
        while heap and heap[0][2] not in running:  # cancelled
            heapq.heappop(heap)
        return heap[0][0] - self.ends if heap else 0

    def fast_forward(self, steps: int) -> None:
        """``steps`` times ``finish_step()`` then ``begin_step()``, in O(1), where neither can
        change the batch: no sequence finishes (``steps < steps_to_finish()``) and the step in
        progress admitted nobody, so nobody can be admitted until one finishes.  Every such
        step is identical, which is what lets a simulator jump over them."""
        if steps <= 0:
            return
        if steps >= self.steps_to_finish():
            raise ValueError("fast_forward would finish a sequence; step it instead")
        self.ends += steps
        self._owed -= steps * len(self.running)

    def sequences(self) -> list[Sequence]:
        """Running then waiting sequences, with exact token counts."""
        for seq in self.running:
            seq.generated = self.ends - seq.base
        return [*self.running, *self.waiting]

    def load(self) -> ReplicaLoad:
        return ReplicaLoad(len(self.running), len(self.waiting), self._pending, self._owed)
