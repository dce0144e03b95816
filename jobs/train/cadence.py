"""When periodic work is due: one rule for logging, probing and checkpointing (big_vision's `itstime`)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Cadence:
    """Due every `every` steps and at the last step of a stage; `every` = 0: at the last step only.
    A component that owns a cadence asks it, so that the loop holds no step arithmetic."""

    every: int

    def due(self, step: int, last: bool = False) -> bool:
        return last or (self.every > 0 and step % self.every == 0)
