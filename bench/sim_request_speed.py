"""Speed of the request-level simulator, in simulated requests per second of one core.

Two traces: a synthetic one (~20k requests at ~5 rps on 2x A10G spot + 1x L40S on-demand,
llama-3.1-8b, two spot pre-emptions) and, when ../shared/data is present, the Azure LLM
inference conversation trace (19,366 requests, ~1 h) on a fleet sized for it.

Each runs with core's ``BatchEngine`` and with ``TunedEngine`` below: the same execution rule
with a step-time table and less per-token work, proposed for ``core/perf.py``.  The script
checks that both give byte-identical summaries and per-request arrays, then prints times and
the ratio.  Times are the process's CPU time (``time.process_time``: build machines are
shared), best of ``--repeat`` runs.

    .venv/bin/python bench/sim_request_speed.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from datetime import datetime
from pathlib import Path

from fleetpilot.catalogue import load_catalogue
from fleetpilot.core.model import Profile, ReplicaLoad
from fleetpilot.core.perf import BatchEngine, Sequence, Step, step_time
from fleetpilot.core.workload import TraceRequest, synthetic_trace
from fleetpilot.sim.request_level import SimResult, simulate

MODEL = "llama-3.1-8b"
AZURE = (
    Path(__file__).resolve().parents[2]
    / "shared/data/azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv"
)


class TunedEngine(BatchEngine):
    """BatchEngine's execution rule, with less work per step (proposed for ``core/perf.py``):

    - the step time is looked up in a table made once per engine (``step_time`` interpolates
      through ``step_points`` on every call);
    - ``begin_step`` skips the prefill sum when nobody is admitted;
    - ``end_step`` rebuilds the running list only when a sequence finished;
    - ``load()`` reads counters kept up to date by ``add``/``cancel``/``begin_step``/``end_step``
      instead of summing over every sequence.

    Same floats, same order of operations: the simulation results are byte-identical.
    """

    def __init__(self, profile: Profile, slowdown: float = 1.0) -> None:
        super().__init__(profile, slowdown)
        self._steps = tuple(step_time(profile, b) for b in range(profile.max_batch + 1))
        self._pending = 0  # prompt tokens waiting
        self._owed = 0  # output tokens owed to running and waiting sequences

    def add(self, seq: Sequence) -> None:
        super().add(seq)
        self._pending += seq.prompt_tokens
        self._owed += seq.max_tokens - seq.generated

    def cancel(self, seq_id: str) -> bool:
        for seq in (*self.running, *self.waiting):
            if seq.id == seq_id:
                if seq in self.waiting:
                    self._pending -= seq.prompt_tokens
                self._owed -= seq.max_tokens - seq.generated
                break
        return super().cancel(seq_id)

    def begin_step(self) -> Step:
        running, waiting, cap = self.running, self.waiting, self.profile.max_batch
        ids: tuple[str, ...] = ()
        prefill = 0.0
        if waiting and len(running) < cap:
            admitted = []
            while waiting and len(running) < cap:
                seq = waiting.popleft()
                running.append(seq)
                admitted.append(seq)
            tokens = sum(s.prompt_tokens for s in admitted)
            self._pending -= tokens
            prefill = tokens / self.profile.prefill_rate
            ids = tuple(s.id for s in admitted)
        batch = len(running)
        duration = (self._steps[batch] + prefill) * self.slowdown if batch else 0.0
        return Step(duration=duration, batch=batch, admitted=ids)

    def end_step(self) -> list[Sequence]:
        stepped = self.running
        self._owed -= len(stepped)
        finished = False
        for seq in stepped:
            seq.generated += 1
            if seq.generated >= seq.max_tokens:
                finished = True
        if finished:
            self.running = [s for s in stepped if s.generated < s.max_tokens]
        else:
            self.running = stepped.copy()
        return stepped

    def load(self) -> ReplicaLoad:
        return ReplicaLoad(len(self.running), len(self.waiting), self._pending, self._owed)


def azure_trace() -> tuple[TraceRequest, ...]:
    rows = []
    with AZURE.open() as f:
        for row in csv.DictReader(f):
            ts = datetime.fromisoformat(row["TIMESTAMP"][:26])
            rows.append((ts, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
    t0 = rows[0][0]
    return tuple(TraceRequest((ts - t0).total_seconds(), max(p, 1), max(o, 1)) for ts, p, o in rows)


def fingerprint(res: SimResult) -> str:
    arrays = [res.arrival, res.ttft, res.e2e, res.status, res.pool, res.output_tokens]
    return json.dumps([res.summary(), [a.tolist() for a in arrays]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cat = load_catalogue()
    pools = cat.pools(MODEL, ["A10G", "L40S"])
    cases = [
        (
            "synthetic 4000 s @ 5 rps, 2x A10G spot + 1x L40S",
            synthetic_trace(4000, 5.0, seed=1),
            {"A10G-spot": 2, "L40S-on_demand": 1},
            {"A10G-spot": [1000.0, 2500.0]},
        )
    ]
    if AZURE.exists():
        cases.append(
            (
                "Azure conversation 2023, 4x A10G spot + 4x L40S",
                azure_trace(),
                {"A10G-spot": 4, "L40S-on_demand": 2, "L40S-spot": 2},
                {"A10G-spot": [900.0], "L40S-spot": [1800.0]},
            )
        )
    for name, trace, initial, pre in cases:
        best: dict[str, float] = {}
        prints = {}
        for label, engine in (("BatchEngine", BatchEngine), ("TunedEngine", TunedEngine)):
            for _ in range(args.repeat):
                t0 = time.process_time()
                res = simulate(trace, pools, initial=initial, preemptions=pre, engine=engine)
                dt = time.process_time() - t0
                best[label] = min(best.get(label, dt), dt)
            prints[label] = fingerprint(res)
        s = res.summary()
        same = prints["BatchEngine"] == prints["TunedEngine"]
        print(f"{name}: {len(trace)} requests, {s['output_tokens']} output tokens")
        print(f"  ok {s['ok']} shed {s['shed']} lost {s['lost']} preemptions {s['preemptions']}")
        print(f"  p99 TTFT {s['ttft_p99']:.3f}s, SLO attainment {s['slo_attainment']:.3f}")
        for label, dt in best.items():
            print(f"  {label:12s} {dt:6.3f} s  {len(trace) / dt:8.0f} simulated requests/s")
        print(f"  ratio {best['BatchEngine'] / best['TunedEngine']:.2f}x; identical: {same}")


if __name__ == "__main__":
    main()
