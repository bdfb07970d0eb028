"""Count the samples the loader replaced because they could not be read, as the main process sees them.

Workers attach a record per replaced sample to the batch it was needed for (``MultiModalBatch.quarantined``),
so the counts cover exactly the batches handed out: they do not depend on the number of workers or on what
was prefetched, and they resume with the loader state.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

RECENT = 20


class QuarantineReport:
    def __init__(self) -> None:
        self.by_problem: Counter[str] = Counter()
        self.by_shard: Counter[str] = Counter()
        self.recent: deque[dict[str, str]] = deque(maxlen=RECENT)

    def add(self, records: list[dict[str, str]]) -> None:
        for record in records:
            self.by_problem[record["problem"]] += 1
            self.by_shard[record["shard"]] += 1
            self.recent.append(record)

    def summary(self) -> dict[str, Any]:
        """``quarantined`` (total), ``by_problem``, ``by_shard`` and the ``recent`` records (shard, key, problem,
        detail)."""
        return {
            "quarantined": sum(self.by_problem.values()),
            "by_problem": dict(self.by_problem),
            "by_shard": dict(self.by_shard),
            "recent": list(self.recent),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"by_problem": dict(self.by_problem), "by_shard": dict(self.by_shard)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.by_problem = Counter(state.get("by_problem", {}))
        self.by_shard = Counter(state.get("by_shard", {}))
        self.recent.clear()
