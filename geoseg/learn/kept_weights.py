"""What a fine-tune keeps of a start checkpoint that holds weights by GSD.

A checkpoint may hold several sets of weights of one network, each serving the readings up to
a GSD (``weights_by_gsd``, the last set, its ``state_dict``, every coarser one): the default
model reads tiles at 1 m or finer through one set and coarser tiles through another. A
fine-tune trains one set, the one that serves its coarsest chip. The sets that serve none of
its chips' GSDs (all finer than its finest chip, or all coarser than its coarsest) never saw
its data, so the model it writes keeps them as they were, with the score thresholds that went
with them, and its trained weights serve the GSDs in between: a fine-tune of the default on
0.3 m buildings leaves how Sentinel-2 ships and fields are found as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from geoseg.config import value_at_gsd

StateDict = Mapping[str, Any]
Steps = list[tuple[float, StateDict]]
ByGsd = dict[str, list[list[float]]]


@dataclass(frozen=True)
class KeptWeights:
    """A start checkpoint's weight sets that serve none of a fine-tune's chips.

    ``finer``: the steps finer than every chip; ``trained_up_to``: the GSD the trained
    weights serve up to, ``None`` where they serve every coarser one (they are the main
    weights); ``coarser``: the steps between that GSD and the main weights; ``main``: the
    start's main weights where every chip is finer than them (else ``None``); ``min_score``
    and ``min_score_by_gsd``: the start's score thresholds (the kept sets' GSDs keep them).
    """

    finer: Steps
    trained_up_to: float | None
    coarser: Steps
    main: StateDict | None
    min_score: dict[str, float]
    min_score_by_gsd: ByGsd

    @classmethod
    def of(cls, payload: Mapping[str, Any], chip_gsd_m: tuple[float, float]) -> KeptWeights | None:
        """What to keep of the checkpoint ``payload`` for chips read at ``chip_gsd_m`` (finest,
        coarsest); ``None`` where it has one set, or no set serves none of the chips."""
        steps = [(float(gsd), weights) for gsd, weights in payload.get("weights_by_gsd") or ()]
        if not steps:
            return None
        finest, coarsest = (_band(steps, gsd) for gsd in chip_gsd_m)
        if finest == 0 and coarsest == len(steps):
            return None  # the chips span every set: the trained weights serve every GSD
        last = coarsest == len(steps)
        return cls(
            finer=steps[:finest],
            trained_up_to=None if last else steps[coarsest][0],
            coarser=[] if last else steps[coarsest + 1 :],
            main=None if last else payload["state_dict"],
            min_score=dict(payload.get("min_score") or {}),
            min_score_by_gsd={
                c: [list(map(float, s)) for s in v]
                for c, v in (payload.get("min_score_by_gsd") or {}).items()
            },
        )

    def weights(self, trained: StateDict) -> tuple[StateDict, Steps]:
        """The checkpoint's ``state_dict`` and ``weights_by_gsd`` around the ``trained`` set."""
        if self.trained_up_to is None:
            return trained, list(self.finer)
        assert self.main is not None
        return self.main, [*self.finer, (self.trained_up_to, trained), *self.coarser]

    def thresholds(
        self, tuned: Mapping[str, float] | None, classes: Sequence[str]
    ) -> tuple[dict[str, float] | None, ByGsd | None]:
        """``min_score`` and ``min_score_by_gsd``: the ``tuned`` thresholds where the trained
        weights serve, the start's where the kept sets do."""
        if tuned is None:
            return None, None
        low = self.finer[-1][0] if self.finer else None  # the trained GSDs lie above it
        high = self.trained_up_to  # ... and up to it
        main: dict[str, float] = {}
        steps: ByGsd = {}
        for name in classes:
            start = self.min_score.get(name, tuned[name])
            own = self.min_score_by_gsd.get(name, [])
            out = []
            if low is not None:
                out += [s for s in own if s[0] < low] + [[low, value_at_gsd(own, low, start)]]
            if high is None:
                main[name] = tuned[name]
            else:
                out += [[high, tuned[name]]] + [s for s in own if s[0] > high]
                main[name] = start
            if out:
                steps[name] = out
        return main, steps or None

    def note(self) -> str:
        """Which GSDs keep the start's weights, in words."""
        parts = []
        if self.finer:
            parts.append(f"up to {self.finer[-1][0]:g} m")
        if self.trained_up_to is not None:
            parts.append(f"over {self.trained_up_to:g} m")
        return "readings " + " and ".join(parts)

    def to_payload(self) -> dict[str, Any]:
        """Plain values for a resumable checkpoint (see :meth:`from_payload`)."""
        return {
            "finer": [[g, w] for g, w in self.finer],
            "trained_up_to": self.trained_up_to,
            "coarser": [[g, w] for g, w in self.coarser],
            "main": self.main,
            "min_score": self.min_score,
            "min_score_by_gsd": self.min_score_by_gsd,
        }

    @classmethod
    def from_payload(cls, value: Mapping[str, Any] | None) -> KeptWeights | None:
        """:meth:`to_payload` read back (``None`` stays ``None``)."""
        if value is None:
            return None
        return cls(
            finer=[(float(g), w) for g, w in value["finer"]],
            trained_up_to=value["trained_up_to"],
            coarser=[(float(g), w) for g, w in value["coarser"]],
            main=value["main"],
            min_score=dict(value["min_score"]),
            min_score_by_gsd=dict(value["min_score_by_gsd"]),
        )


def _band(steps: Steps, gsd_m: float) -> int:
    """The index of the step that serves ``gsd_m``; ``len(steps)`` for the main weights."""
    return value_at_gsd(((up_to, i) for i, (up_to, _) in enumerate(steps)), gsd_m, len(steps))
