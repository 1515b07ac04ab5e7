"""The thread rule: exact multiply-accumulate counts, the rule's choice, and precedence."""

import pytest
import torch
from torch import nn

from robustlab import threads
from robustlab.errors import ConfigError


def test_batch_macs_counts_linear_and_conv_work_exactly():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    assert threads.batch_macs(mlp, torch.rand(32, 1, 8, 8)) == 32 * (64 * 256 + 256 * 10)
    # conv 3->8, 3x3, padding 1 on 8x8: 8*8*8 outputs, each 3*3*3 MACs; then linear 512->4
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(512, 4))
    assert threads.batch_macs(cnn, torch.rand(5, 3, 8, 8)) == 5 * (8 * 8 * 8 * 27 + 512 * 4)
    grouped = nn.Conv2d(4, 8, 3, groups=2)  # each output sums 2 channels x 9
    assert threads.batch_macs(grouped, torch.rand(2, 4, 5, 5)) == 2 * (8 * 3 * 3) * 18


def test_the_rule_gives_one_thread_to_small_work_and_more_to_large(monkeypatch):
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    assert threads.choose_threads(small, torch.rand(512, 1, 8, 8), max_threads=8) == 1
    big = nn.Linear(1024, 1024)  # 256 x 1.05M = 268M MACs: 1 + 268M // 150M = 2 threads
    x = torch.rand(256, 1024)
    macs = threads.batch_macs(big, x)
    assert threads.choose_threads(big, x, max_threads=8) == 1 + macs // threads.MACS_PER_EXTRA_THREAD == 2
    huge = torch.rand(4096, 1024)  # 16 x as much work: all 8 cores
    assert threads.choose_threads(big, huge, max_threads=8) == 8
    assert threads.choose_threads(big, huge, max_threads=2) == 2


def test_thread_budget_restores_and_follows_precedence(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    model = nn.Linear(4, 2)
    x = torch.rand(8, 4)
    if before == threads._BASELINE == threads.physical_cores():
        with threads.thread_budget(model, x) as n:  # the rule: tiny work, one thread
            assert n == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == before
    with threads.thread_budget(model, x, threads=3) as n:  # explicit wins
        assert n == 3 and torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    monkeypatch.setenv(threads.ENV, "2")
    with threads.thread_budget(model, x) as n:
        assert n == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv(threads.ENV, "auto")  # auto: robustlab's rule even over OMP_NUM_THREADS
    assert threads.user_choice() is None
    monkeypatch.delenv(threads.ENV)
    assert threads.user_choice() == torch.get_num_threads()  # the user's OMP setting is kept


def test_a_users_set_num_threads_is_left_alone(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    mine = before + 1
    torch.set_num_threads(mine)
    try:
        with threads.thread_budget(nn.Linear(4, 2), torch.rand(8, 4)) as n:
            assert n == mine and torch.get_num_threads() == mine
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", ["0", "-2", "two", 0, True, 2.5])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ConfigError, match="threads"):
        threads.parse_threads(bad)
