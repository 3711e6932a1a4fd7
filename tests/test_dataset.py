"""Training / evaluation datasets, collate and length buckets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mvector.audio import load_audio, save_wav
from mvector.audio.augment import build_augmenter
from mvector.config import load_config
from mvector.data.dataset import (
    Batch,
    EvalDataset,
    TrainDataset,
    Unreadable,
    collate_batch,
)
from mvector.data.lists import Utterance
from mvector.embedding import length_batches
from mvector.errors import ConfigError

SR = 16000


def write_clip(path: Path, seconds: float, seed: int = 0, silence: float = 0.0) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    x = 0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.05 * rng.standard_normal(n)
    if silence:
        x = np.concatenate([np.zeros(int(silence * SR)), x, np.zeros(int(silence * SR))])
    save_wav(path, x.astype(np.float32), SR)
    return path


@pytest.fixture()
def clips(tmp_path: Path) -> dict[str, Path]:
    return {
        "long": write_clip(tmp_path / "long.wav", 5.0, 1),
        "mid": write_clip(tmp_path / "mid.wav", 2.5, 2),
        "short": write_clip(tmp_path / "short.wav", 1.0, 3),
        "tiny": write_clip(tmp_path / "tiny.wav", 0.3, 4),
    }


def utts(*paths: Path) -> list[Utterance]:
    return [Utterance(str(p), i % 3, i + 1) for i, p in enumerate(paths)]


def test_crop_lengths_short_clips_whole_and_min_duration_filter(clips, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"not audio at all" * 10)
    items = utts(clips["long"], clips["mid"], clips["short"], clips["tiny"], corrupt)
    ds = TrainDataset(items, sample_rate=SR, max_duration=2.0, min_duration=0.5, normalize=False, seed=3)
    assert len(ds) == 3
    assert ds.num_filtered_short == 1 and ds.num_unreadable == 1 and ds.unreadable == [str(corrupt)]
    lengths = [ds[i][0].shape[0] for i in range(len(ds))]
    assert lengths == [2 * SR, 2 * SR, SR]  # longer clips cropped, the 1 s clip whole
    labels = [ds[i][1] for i in range(len(ds))]
    assert labels == [0, 1, 2]
    # the crop is a contiguous window of the decoded file
    full = load_audio(str(clips["long"]), SR)
    wave = ds[0][0]
    start = int(np.argmin([np.abs(full[s : s + 64] - wave[:64]).sum() for s in range(full.shape[0] - 2 * SR + 1)]))
    np.testing.assert_array_equal(full[start : start + 2 * SR], wave)
    # min_duration 0 reads no headers and filters nothing
    assert len(TrainDataset(items, min_duration=0.0)) == 5


def test_crops_are_random_per_epoch_but_reproducible(clips) -> None:
    ds = TrainDataset(utts(clips["long"]), max_duration=1.0, min_duration=0.0, normalize=False, seed=7)
    first = ds[0][0]
    assert np.array_equal(first, ds[0][0])
    ds.set_epoch(1)
    other = ds[0][0]
    assert not np.array_equal(first, other)
    ds.set_epoch(0)
    assert np.array_equal(first, ds[0][0])
    reseeded = TrainDataset(utts(clips["long"]), max_duration=1.0, min_duration=0.0, normalize=False, seed=8)
    assert not np.array_equal(first, reseeded[0][0])


def test_normalisation_and_vad(clips, tmp_path: Path) -> None:
    ds = TrainDataset(utts(clips["mid"]), max_duration=3.0, min_duration=0.0, normalize=True, target_db=-26.0)
    wave = ds[0][0]
    assert 20 * np.log10(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) == pytest.approx(-26.0, abs=0.05)
    padded = write_clip(tmp_path / "padded.wav", 1.0, 5, silence=1.0)  # 1 s silence on each side
    plain = TrainDataset(utts(padded), max_duration=5.0, min_duration=0.0)[0][0]
    trimmed = TrainDataset(utts(padded), max_duration=5.0, min_duration=0.0, vad=True)[0][0]
    assert plain.shape[0] == 3 * SR
    assert 0.9 * SR < trimmed.shape[0] < 1.2 * SR


def test_speed_perturbation_still_fills_the_crop(clips) -> None:
    augmenter = build_augmenter({"speed": {"prob": 1.0, "speeds": [1.2]}})
    ds = TrainDataset(utts(clips["long"]), max_duration=2.0, min_duration=0.0, augmenter=augmenter)
    assert ds[0][0].shape[0] == 2 * SR
    # a short clip is sped up whole, not padded: 1 s / 1.2
    short = TrainDataset(utts(clips["short"]), max_duration=2.0, min_duration=0.0, augmenter=augmenter)
    assert abs(short[0][0].shape[0] - SR / 1.2) <= 1


def test_unreadable_file_mid_epoch_is_skipped_in_the_batch(clips, tmp_path: Path) -> None:
    victim = write_clip(tmp_path / "victim.wav", 2.0, 6)
    ds = TrainDataset(utts(clips["long"], victim, clips["mid"]), max_duration=1.0, min_duration=0.5)
    assert len(ds) == 3 and ds.num_unreadable == 0
    victim.write_bytes(b"RIFF" + bytes(range(256)) * 4)  # damaged after the list was checked
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_batch)
    batches = list(loader)
    assert len(batches) == 1
    batch = batches[0]
    assert isinstance(batch, Batch)
    assert batch.waveforms.shape == (2, SR)
    assert batch.labels.tolist() == [0, 2]
    assert len(batch.skipped) == 1 and batch.skipped[0][0] == str(victim) and batch.skipped[0][1]
    victim.unlink()
    assert isinstance(ds[1], Unreadable) and "not found" in ds[1].reason


def test_items_reproducible_across_worker_counts(clips) -> None:
    augmenter = build_augmenter(
        {"volume": {"prob": 0.5}, "shift": {"prob": 0.5, "max_shift_ms": 20.0}, "speed": {"prob": 0.5}}
    )
    items = utts(clips["long"], clips["mid"], clips["short"], clips["long"], clips["mid"], clips["short"])
    items = [Utterance(u.path, u.label, i) for i, u in enumerate(items)]
    # the same file twice is fine for a dataset (lists reject it; the dataset does not care)
    ds = TrainDataset(items, max_duration=1.5, min_duration=0.0, augmenter=augmenter, seed=11)

    def run(workers: int, epoch: int) -> list[torch.Tensor]:
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_batch)
        return [b.waveforms for b in loader]

    serial = run(0, 2)
    parallel = run(2, 2)
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(serial, run(0, 3)))


def test_collate_padding_and_all_unreadable() -> None:
    batch = collate_batch(
        [
            (np.full(4, 0.5, np.float32), 3),
            Unreadable("/a.wav", "bad"),
            (torch.ones(2), 1),
        ]
    )
    assert batch.waveforms.dtype == torch.float32 and batch.lengths.dtype == torch.int64
    assert batch.waveforms.tolist() == [[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 0.0, 0.0]]
    assert batch.lengths.tolist() == [4, 2] and batch.labels.tolist() == [3, 1]
    assert batch.skipped == [("/a.wav", "bad")]
    empty = collate_batch([Unreadable("/a.wav", "x"), Unreadable("/b.wav", "y")])
    assert empty.waveforms.shape == (0, 0) and len(empty) == 0 and len(empty.skipped) == 2
    moved = batch.to("cpu")
    assert torch.equal(moved.waveforms, batch.waveforms)


def test_eval_dataset_leading_crop_index_and_durations(clips, tmp_path: Path) -> None:
    paths = [str(clips["long"]), Utterance(str(clips["short"]), 5), str(tmp_path / "gone.wav")]
    ds = EvalDataset(paths, sample_rate=SR, max_duration=2.0, normalize=False)
    wave, index = ds[0]
    assert index == 0 and wave.shape[0] == 2 * SR
    np.testing.assert_array_equal(wave, load_audio(str(clips["long"]), SR)[: 2 * SR])
    assert ds[1][0].shape[0] == SR and ds[1][1] == 1
    assert isinstance(ds[2], Unreadable) and ds[2].path == str(tmp_path / "gone.wav")
    assert ds.durations() == pytest.approx([2.0, 1.0, 0.0])
    whole = EvalDataset([str(clips["long"])], max_duration=None)
    assert whole[0][0].shape[0] == 5 * SR and whole.durations() == pytest.approx([5.0])
    # batched by length through a DataLoader, then put back in order by index
    batches = length_batches(ds.durations(), 2)
    loader = DataLoader(ds, batch_sampler=batches, collate_fn=collate_batch)
    got = {}
    for batch in loader:
        for row, idx in enumerate(batch.labels.tolist()):
            got[idx] = int(batch.lengths[row])
    assert got == {0: 2 * SR, 1: SR}


def test_length_batches_order_longest_first() -> None:
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.5, 10.0, size=23).tolist()
    batches = length_batches(durations, 5)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(23))
    ordered = [durations[i] for i in flat]
    assert ordered == sorted(durations, reverse=True)
    assert length_batches([], 4) == []
    with pytest.raises(ConfigError):
        length_batches([1.0], 0)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="max_duration"):
        TrainDataset([], max_duration=0)
    with pytest.raises(ConfigError, match="min_duration"):
        TrainDataset([], max_duration=1.0, min_duration=2.0)


def test_any_per_file_failure_is_skipped(tmp_path, monkeypatch):
    import mvector.data.dataset as dataset_module
    from mvector.data.dataset import TrainDataset, Unreadable
    from mvector.data.lists import Utterance

    path = tmp_path / "a.wav"
    save_wav(path, np.zeros(16000, "float32") + 0.1, 16000)

    def explode(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(dataset_module, "load_audio", explode)
    item = TrainDataset([Utterance(str(path), 0)], min_duration=0.0)[0]
    assert isinstance(item, Unreadable) and item.reason == "MemoryError"


def _clip(folder, name: str, seconds: float, sample_rate: int = 16000) -> str:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    path = folder / name
    save_wav(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate)
    return str(path)


def test_short_clips_are_repeated_to_fill_the_crop_or_left_short(tmp_path):
    path = _clip(tmp_path, "short.wav", 0.7)
    padded = TrainDataset([Utterance(path, 0)], max_duration=2.0, normalize=False)
    repeated = TrainDataset([Utterance(path, 0)], max_duration=2.0, normalize=False, short_clips="repeat")
    short, _ = padded[0]
    full, _ = repeated[0]
    assert short.shape == (11200,)
    assert full.shape == (32000,)
    np.testing.assert_array_equal(full[:11200], short)
    np.testing.assert_array_equal(full[11200:22400], short)  # the clip again, from its start
    long_path = _clip(tmp_path, "long.wav", 3.0)
    assert TrainDataset([Utterance(long_path, 0)], max_duration=2.0, short_clips="repeat")[0][0].shape == (32000,)
    with pytest.raises(ConfigError, match="short_clips"):
        TrainDataset([Utterance(path, 0)], short_clips="loop")


def test_config_names_a_bad_short_clips_value():
    with pytest.raises(ConfigError, match="dataset_conf.short_clips"):
        load_config("ecapa_tdnn", {"dataset_conf.short_clips": "tile"})
