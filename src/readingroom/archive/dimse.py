"""DIMSE edge (placeholder until the SCP/SCU lands)."""

from __future__ import annotations

from readingroom.runtime import Runtime


class DimseServer:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
