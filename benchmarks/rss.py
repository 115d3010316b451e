"""Peak resident memory of a phase of a benchmark (the host's figure on a CPU, where neither
XLA nor PyTorch reports a device peak): a thread samples /proc/self/status every 20 ms."""

from __future__ import annotations

import threading
import time


def rss_gib() -> float:
    """The process's resident memory now (GiB; NaN where /proc is absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


class PeakRSS:
    """``with PeakRSS() as p: ...`` then ``p.peak`` (GiB) and ``p.extra`` (peak minus the RSS at
    entry: what the phase itself added)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_gib()
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while self._running:
            self.peak = max(self.peak, rss_gib())
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, rss_gib())

    @property
    def extra(self) -> float:
        return self.peak - self.start
