from torchresume.catalog import ListedCheckpoint
from torchresume.retention import KeepBest, KeepEveryNMinutes, KeepLast


def _entries(times: list[float], metrics: list[float] | None = None) -> list[ListedCheckpoint]:
    out = []
    for i, t in enumerate(times):
        e = ListedCheckpoint(f"p-{i}", f"p-1_{i}.ckpt", 1, t, global_step=i)
        if metrics:
            e.metrics = {"acc": metrics[i]}
        out.append(e)
    return out


def test_keep_last() -> None:
    assert KeepLast(2).keep(_entries([1, 2, 3])) == {"p-1", "p-2"}
    assert KeepLast(0).keep(_entries([1, 2])) == set()


def test_keep_every_n_minutes_keeps_one_per_window_and_the_newest() -> None:
    times = [0, 30, 70, 130, 140, 200]  # seconds
    assert KeepEveryNMinutes(1).keep(_entries(times)) == {"p-0", "p-2", "p-3", "p-5"}


def test_keep_best() -> None:
    entries = _entries([1, 2, 3, 4], metrics=[0.5, 0.9, 0.7, 0.8])
    assert KeepBest(2, "acc", "max").keep(entries) == {"p-1", "p-3"}
    assert KeepBest(1, "acc", "min").keep(entries) == {"p-0"}
