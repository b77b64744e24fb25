"""The engine's CPU gauge: the share of a core over the last full period, read from the
clocks only when asked."""

import pytest

from customer_service.sync.cpu_share import CpuShare, share_of_a_core


class Clocks:
    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 5.0
        self.reads = 0

    def read_wall(self) -> float:
        return self.wall

    def read_cpu(self) -> float:
        self.reads += 1
        return self.cpu

    def advance(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu

    def gauge(self) -> CpuShare:
        return CpuShare(period=0.25, wall=self.read_wall, cpu=self.read_cpu)


def test_share_of_a_core() -> None:
    assert share_of_a_core(0.2, 0.25) == pytest.approx(0.8)
    assert share_of_a_core(0.0, 0.25) == 0.0
    assert share_of_a_core(0.1, 0.0) == 0.0  # no time passed: nothing to say
    assert share_of_a_core(-0.1, 1.0) == 0.0


def test_the_share_is_that_of_the_last_full_period() -> None:
    clocks = Clocks()
    gauge = clocks.gauge()
    assert gauge() == pytest.approx(0.0)  # no period has passed yet
    clocks.advance(wall=0.25, cpu=0.2)
    assert gauge() == pytest.approx(0.8)
    # Within the next period the reading stands, whatever the CPU does meanwhile.
    clocks.advance(wall=0.1, cpu=0.1)
    assert gauge() == pytest.approx(0.8)
    clocks.advance(wall=0.15, cpu=0.0)
    assert gauge() == pytest.approx(0.4)  # 0.1 s of CPU over the 0.25 s since the last reading


def test_a_long_quiet_stretch_reads_low_at_once() -> None:
    clocks = Clocks()
    gauge = clocks.gauge()
    clocks.advance(wall=0.25, cpu=0.25)
    assert gauge() == pytest.approx(1.0)
    clocks.advance(wall=10.0, cpu=0.5)
    assert gauge() == pytest.approx(0.05)


def test_the_cpu_clock_is_read_only_once_a_period() -> None:
    clocks = Clocks()
    gauge = clocks.gauge()
    reads = clocks.reads
    for _ in range(100):
        gauge()
    assert clocks.reads == reads
