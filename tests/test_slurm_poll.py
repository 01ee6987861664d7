"""`toolkit submit --wait`'s polling interval (toolkit.launch.slurm_wait.next_poll) and its state
line (queue_line): pure, no Slurm.
Shared clusters punish polling, so a campaign that waits without change must settle at one cycle
(sacct + squeue) a minute, and a change must bring the next look back to 2 s."""

from __future__ import annotations

import pytest

from toolkit.launch.slurm_wait import next_poll, queue_line


def test_a_change_resets_the_interval_to_two_seconds():
    assert next_poll(60.0, True, 10_000.0) == 2.0


@pytest.mark.parametrize(
    "interval,waited,expected",
    [
        (2.0, 0.0, 2.0),  # a tenth of nothing waited: the floor
        (2.0, 25.0, 2.5),  # a tenth of 25 s caps the ×1.5 growth (3.0)
        (2.0, 1000.0, 3.0),  # ×1.5
        (4.5, 1000.0, 6.75),
        (50.0, 10_000.0, 60.0),  # the 60 s ceiling caps ×1.5 (75)
        (60.0, 10_000.0, 60.0),
    ],
)
def test_the_interval_grows_while_nothing_changes(interval, waited, expected):
    assert next_poll(interval, False, waited) == expected


def test_an_hour_in_the_queue_without_change():
    """Replays an hour of cycles.  The interval never exceeds a tenth of the time waited (so growth
    is about ×1.1 a cycle at first), reaches the 60 s ceiling after about 25 minutes, and the hour
    costs under 100 cycles where a fixed 2 s interval costs 1,800."""
    waited, interval, cycles, last_ten_minutes = 0.0, 2.0, 0, 0
    while waited < 3600.0:
        cycles += 1
        if waited >= 3000.0:
            last_ten_minutes += 1
        assert interval <= max(2.0, 0.1 * waited) + 1e-12 and interval <= 60.0
        interval = next_poll(interval, False, waited)
        waited += interval
    assert last_ten_minutes == 10  # one cycle (2 scheduler calls) a minute once settled
    assert cycles < 100


def test_queue_line_counts_every_task_element_once():
    """Array 10 has 4 elements (one running, one pending by itself, two in a pending range line),
    array 11 has 2 (one failed, one Slurm knows nothing of); the gather job 12 is not a task."""
    states = {
        "10_0": ("RUNNING", "a100-node"),
        "10_1": ("PENDING", ""),
        "10_[2-3]": ("PENDING", ""),
        "11_0": ("FAILED", "h100-node"),
        "12": ("PENDING", ""),
    }
    line = queue_line(states, {"10": range(4), "11": range(2)})
    assert line == "slurm: 3 pending, 1 running, 1 failed, 1 unknown of 6 task(s)"
