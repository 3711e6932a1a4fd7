"""The kill-loop harness: SIGKILL real `mvector train` processes at named points of a checkpoint save, resume, and
look at what the model folder holds after each kill. Used by tests/test_kill_loop.py (which asserts) and by
`python tests/kill_loop.py` (which prints the figures, e.g. to compare two checkouts).

Training processes are forked from a multiprocessing "forkserver" that has imported torch and mvector once, so a
process starts in well under a second; each is a separate process running the real command line, and it is killed
with SIGKILL from here. The test-only hook ``MVECTOR_TEST_SAVE_PAUSE`` (mvector.checkpoint) makes the chosen save
stop at the chosen point and write a marker file; the harness waits for the marker, then kills.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PAUSE_ENV = "MVECTOR_TEST_SAVE_PAUSE"
MARKER_ENV = "MVECTOR_TEST_SAVE_PAUSE_MARKER"
KEEP_LAST = 2
EPOCHS = 9
MODEL_NAME = "TDNN_Fbank"
TRAINING_FILES = ("model.pt", "head.pt", "optimizer.pt", "scheduler.pt", "rng.pt", "config.yml", "state.json")
_EPOCH = re.compile(r"^epoch_(\d+)$")


def flags(corpus: Path, save: Path) -> list[str]:
    """`mvector train` arguments of the tiny run: a TDNN a few tens of kB, 5 steps and an evaluation per epoch."""
    return [
        "--configs", "tdnn", "--use_gpu", "False", "--save_model_path", str(save),
        f"--dataset_conf.train_list={corpus / 'train.txt'}", f"--dataset_conf.test_list={corpus / 'test.txt'}",
        "--dataset_conf.batch_size=8", "--dataset_conf.num_workers=0", "--dataset_conf.max_duration=0.6",
        "--dataset_conf.min_duration=0.3", "--feature_conf.num_mel_bins=24", "--model_conf.channels=32",
        "--model_conf.stats_channels=32", "--model_conf.embd_dim=16", "--model_conf.pooling_type=TSP",
        "--optimizer_conf.learning_rate=0.01", "--loss_conf.margin_scheduler.end_epoch=2",
        f"--train_conf.max_epoch={EPOCHS}", f"--train_conf.keep_last_epochs={KEEP_LAST}",
        "--train_conf.log_backend=none", "--train_conf.log_interval=100",
    ]  # fmt: skip


def make_corpus(root: Path) -> Path:
    """8 synthetic speakers × 8 utterances: utterances 0-4 train, 5-7 test (the same voices, so the EER moves)."""
    from mvector.data.synthetic import generate_corpus

    listing = generate_corpus(root, 8, 8, seed=0, min_duration=0.6, max_duration=1.0)
    lines = listing.read_text(encoding="utf-8").splitlines()
    index = [int(line.split("\t")[0].rsplit("_", 1)[1].split(".")[0]) for line in lines]
    (root / "train.txt").write_text("".join(f"{x}\n" for x, i in zip(lines, index) if i < 5), encoding="utf-8")
    (root / "test.txt").write_text("".join(f"{x}\n" for x, i in zip(lines, index) if i >= 5), encoding="utf-8")
    return root


def _child(argv: list[str], env: dict[str, str], log: str) -> None:
    """Runs in the forked process: the real command line, its output to ``log``."""
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import threading

    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)
    tqdm.set_lock(threading.RLock())  # not a multiprocessing lock: a killed process would leak its semaphore
    from mvector.cli import main

    code = main(["train", *argv])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Launcher:
    """Starts training processes from a forkserver that imported torch and mvector once."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("forkserver")
        # torch._dynamo: torch.optim imports it on the first optimiser, 4 s that every process would pay again.
        self.ctx.set_forkserver_preload(["torch", "torch._dynamo", "mvector.training.trainer", "mvector.cli.train"])

    def start(self, argv: list[str], env: dict[str, str], log: Path):
        process = self.ctx.Process(target=_child, args=(argv, {"OMP_NUM_THREADS": "1", **env}, str(log)))
        process.start()
        return process


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def folder_epoch(model_dir: Path, name: str) -> int | None:
    """Epoch of checkpoint ``name`` as a resume would see it (``<name>.old`` when ``<name>`` is missing)."""
    for candidate in (model_dir / name, model_dir / f"{name}.old"):
        state = _read_json(candidate / "state.json")
        if "epoch" in state:
            return int(state["epoch"])
    return None


@dataclass
class Kill:
    """One planned kill: the save of ``folder`` (best_model, last_model, epoch) at ``point`` in ``epoch``."""

    folder: str
    point: str
    epoch: int


@dataclass
class Observation:
    """What one kill left on disk (before anything repaired it) and what the previous kill left behind."""

    kill: Kill
    marker: str
    incomplete: list[str] = field(default_factory=list)
    stale_best: str | None = None
    in_flight: set[str] = field(default_factory=set)
    stale_leftovers: list[str] = field(default_factory=list)
    missing_epochs: list[str] = field(default_factory=list)
    best_save_number: int | None = None


def best_epochs(eers: list[float]) -> list[int]:
    """Epochs whose EER is at least as good as every earlier one (the epochs that save best_model)."""
    out, best = [], None
    for epoch, eer in enumerate(eers, 1):
        if best is None or eer <= best:
            out.append(epoch)
            best = eer
    return out


def plan(best: list[int]) -> list[Kill]:
    """Twelve kills in run order: during the 2nd, 3rd and 4th best_model save, between the saves of an epoch,
    between the two renames of a swap, in half-written clones and in an interrupted prune."""
    if len(best) < 4 or best[3] > EPOCHS - 4:
        raise AssertionError(f"need 4 best_model saves by epoch {EPOCHS - 4}, the reference run has {best}")
    b2, b3, b4 = best[1], best[2], best[3]
    return [
        Kill("best_model", "writing", b2),
        Kill("best_model", "written", b3),
        Kill("best_model", "swapping", b3),
        Kill("best_model", "swapped", b4),
        Kill("best_model", "saved", b4),  # between best_model and last_model
        Kill("last_model", "swapping", b4),
        Kill("epoch", "written", b4),
        Kill("epoch", "pruning", b4 + 1),
        Kill("last_model", "writing", b4 + 2),
        Kill("last_model", "saved", b4 + 2),  # between last_model and its epoch_N snapshot
        Kill("epoch", "writing", b4 + 3),
        Kill("last_model", "swapped", b4 + 3),
    ]


def pause_spec(kill: Kill, resumed_epoch: int, best: list[int]) -> str:
    """``MVECTOR_TEST_SAVE_PAUSE`` for ``kill`` in a process that resumes after ``resumed_epoch``."""
    if kill.point == "pruning":
        return f"epoch_{kill.epoch - KEEP_LAST}:pruning:1"
    if kill.folder == "best_model":
        if kill.epoch not in best:
            raise AssertionError(f"epoch {kill.epoch} does not save best_model (best epochs {best})")
        count = sum(1 for e in best if resumed_epoch < e <= kill.epoch)
    else:
        count = kill.epoch - resumed_epoch
    if count < 1:
        raise AssertionError(f"{kill} cannot happen after epoch {resumed_epoch}")
    return f"{kill.folder}:{kill.point}:{count}"


def in_flight(kill: Kill, marker: str) -> set[str]:
    """The names a save paused at ``kill.point`` has beside its folder by design (not leftovers of earlier kills)."""
    name = marker.split()[1]
    return {
        "writing": {f".{name}.tmp"},
        "written": {f".{name}.tmp"},
        "swapping": {f".{name}.tmp", f"{name}.old"},
        "swapped": {f"{name}.old"},
        "saved": set(),
        "pruning": {f".{name}.deleting"},
    }[kill.point]


def is_side_name(name: str) -> bool:
    """Names a save, clone, prune or removal uses besides the checkpoint folders themselves."""
    return name.startswith(".") or name.endswith(".old")


def complete(folder: Path, evaluated: bool = True) -> str | None:
    """None when ``folder`` is a complete checkpoint (its files, a loadable state, result.json), else why not."""
    from mvector.checkpoint import load_checkpoint
    from mvector.errors import CheckpointError

    missing = [n for n in TRAINING_FILES + (("result.json",) if evaluated else ()) if not (folder / n).is_file()]
    if missing:
        return f"{folder.name} lacks {', '.join(missing)}"
    try:
        load_checkpoint(folder, need_training_state=True)
    except CheckpointError as err:
        return f"{folder.name}: {err}"
    return None


def examine(model_dir: Path, kill: Kill, marker: str) -> Observation:
    """Check the invariant on the folder exactly as the kill left it."""
    obs = Observation(kill, marker)
    names = sorted(os.listdir(model_dir))
    checkpoints = [n for n in names if n in ("best_model", "last_model") or _EPOCH.match(n)]
    for name in checkpoints:
        why = complete(model_dir / name)
        if why:
            obs.incomplete.append(why)
    # Every complete folder on disk counts, the .old ones included: what is the best EER any of them records?
    recorded: dict[str, float] = {}
    for name in checkpoints + [n for n in names if n.endswith(".old")]:
        folder = model_dir / name
        if name.endswith(".old") and complete(folder):
            continue
        values = [_finite(_read_json(folder / "result.json").get("eer")),
                  _finite(_read_json(folder / "state.json").get("best_eer"))]  # fmt: skip
        values = [v for v in values if v is not None]
        if values:
            recorded[name] = min(values)
    best_name = "best_model" if "best_model" in names else "best_model.old" if "best_model.old" in names else None
    if recorded:
        best_on_disk = min(recorded.values())
        holder = min(recorded, key=recorded.get)
        best_eer = _finite(_read_json(model_dir / best_name / "result.json").get("eer")) if best_name else None
        if best_eer is None or best_eer > best_on_disk:
            obs.stale_best = f"{best_name} EER {best_eer}, but {holder} records {best_on_disk}"
    obs.in_flight = in_flight(kill, marker)
    obs.stale_leftovers = [n for n in names if is_side_name(n) and n not in obs.in_flight]
    # The last KEEP_LAST epochs up to last_model's are all there, but for the one being written right now.
    last = folder_epoch(model_dir, "last_model")
    writing = marker.split()[1] if kill.folder == "epoch" and kill.point in ("writing", "written") else None
    if (kill.folder, kill.point) in {("last_model", "swapped"), ("last_model", "saved")}:
        writing = f"epoch_{last}"
    for epoch in range(max(1, (last or 0) - KEEP_LAST + 1), (last or 0) + 1):
        name = f"epoch_{epoch}"
        if name != writing and not (model_dir / name).is_dir():
            obs.missing_epochs.append(name)
    return obs


@dataclass
class Report:
    """The whole series: the reference run, every kill, and the folder after the last, clean run."""

    reference_eers: list[float]
    best: list[int]
    observations: list[Observation]
    final_names: list[str]
    final_leftovers: list[str]
    final_incomplete: list[str]
    same_best_as_reference: bool
    same_last_as_reference: bool
    seconds: float


def _wait(process, marker: Path, log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.is_file():
            return marker.read_text(encoding="utf-8").strip()
        if not process.is_alive():
            tail = log.read_text()[-3000:]
            raise AssertionError(f"training ended (exit {process.exitcode}) before the pause:\n{tail}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"no pause within {timeout} s:\n{log.read_text()[-3000:]}")


def _eers_of(log: Path) -> list[float]:
    return [float(x) for x in re.findall(r"epoch \d+: EER ([0-9.]+)", log.read_text(encoding="utf-8"))]


def _model_sha(folder: Path) -> str | None:
    return _read_json(folder / "state.json").get("model_sha256")


def _moved(kill: Kill, resumed: int, best: list[int]) -> Kill:
    """``kill`` moved to the next epoch where it can still happen (comparing checkouts that save in another order)."""
    if kill.folder == "best_model":
        later = [e for e in best if e > resumed]
        if later:
            return Kill(kill.folder, kill.point, max(kill.epoch, later[0]))
        return Kill("last_model", kill.point, resumed + 1)  # no best_model save left: the same point elsewhere
    return Kill(kill.folder, kill.point, max(kill.epoch, resumed + 1))


def run_series(workdir: Path, timeout: float = 120.0, adapt: bool = False) -> Report:
    """Reference run, then 12 SIGKILLs at planned save points with a resume after each, then a clean finish.

    ``adapt`` moves a kill the previous one made impossible to its next chance (for the figures of a checkout that
    saves in another order); the test runs the plan as it is."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(workdir / "corpus")
    launcher = Launcher()
    reference = workdir / "reference"
    log = workdir / "reference.log"
    process = launcher.start(flags(corpus, reference), {}, log)
    process.join(timeout)
    if process.exitcode != 0:
        raise AssertionError(f"the reference run failed (exit {process.exitcode}):\n{log.read_text()[-3000:]}")
    eers = _eers_of(log)
    best = best_epochs(eers)
    if len(best) < 4:
        raise AssertionError(f"the reference run saved best_model only at epochs {best} (EERs {eers}); need 4")
    save = workdir / "killed"
    model_dir = save / MODEL_NAME
    observations = []
    for number, kill in enumerate(plan(best), 1):
        resumed = folder_epoch(model_dir, "last_model") if model_dir.is_dir() else None
        if adapt:
            kill = _moved(kill, resumed or 0, best)
        argv = flags(corpus, save)
        if resumed is not None:
            argv += ["--resume_model", str(model_dir / "last_model")]
        marker = workdir / f"pause_{number}.txt"
        log = workdir / f"run_{number}.log"
        env = {PAUSE_ENV: pause_spec(kill, resumed or 0, best), MARKER_ENV: str(marker)}
        process = launcher.start(argv, env, log)
        try:
            text = _wait(process, marker, log, timeout)
        except AssertionError:
            if not adapt:
                raise
            continue  # this checkout never reaches that point: counted as a kill not made
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout)
        obs = examine(model_dir, kill, text)
        if kill.folder == "best_model":
            obs.best_save_number = best.index(kill.epoch) + 1
        observations.append(obs)
    log = workdir / "final.log"
    process = launcher.start(flags(corpus, save) + ["--resume_model", str(model_dir / "last_model")], {}, log)
    process.join(timeout)
    if process.exitcode != 0:
        raise AssertionError(f"the final resume failed (exit {process.exitcode}):\n{log.read_text()[-3000:]}")
    names = sorted(os.listdir(model_dir))
    final_incomplete = [why for n in names if not is_side_name(n) and (why := complete(model_dir / n))]
    ref_dir = reference / MODEL_NAME
    return Report(
        reference_eers=eers,
        best=best,
        observations=observations,
        final_names=names,
        final_leftovers=[n for n in names if is_side_name(n)],
        final_incomplete=final_incomplete,
        same_best_as_reference=_model_sha(model_dir / "best_model") == _model_sha(ref_dir / "best_model"),
        same_last_as_reference=_model_sha(model_dir / "last_model") == _model_sha(ref_dir / "last_model"),
        seconds=time.monotonic() - started,
    )


def summary(report: Report) -> str:
    """The figures of a series, one kill per line."""
    lines = [f"reference EERs {[round(e, 4) for e in report.reference_eers]}, best_model saved at {report.best}"]
    for i, obs in enumerate(report.observations, 1):
        k = obs.kill
        which = f" (best save #{obs.best_save_number})" if obs.best_save_number else ""
        lines.append(
            f"kill {i:2d}: {k.folder}:{k.point} epoch {k.epoch}{which}: stale best: {obs.stale_best or 'no'}; "
            f"incomplete: {obs.incomplete or 'none'}; leftovers of earlier kills: {obs.stale_leftovers or 'none'}; "
            f"missing epochs: {obs.missing_epochs or 'none'}"
        )
    stale = sum(1 for o in report.observations if o.stale_best)
    leftovers = sum(1 for o in report.observations if o.stale_leftovers)
    lines.append(
        f"{len(report.observations)} kills: stale best_model after {stale}, incomplete folders after "
        f"{sum(1 for o in report.observations if o.incomplete)}, earlier kills' leftovers found at {leftovers}, "
        f"missing epoch snapshots at {sum(1 for o in report.observations if o.missing_epochs)}; after the final clean "
        f"run: folders {report.final_names}, leftovers {report.final_leftovers or 'none'}, incomplete "
        f"{report.final_incomplete or 'none'}, best_model = reference: {report.same_best_as_reference}, "
        f"last_model = reference: {report.same_last_as_reference}; {report.seconds:.0f} s"
    )
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/kill_loop.py WORKDIR [--adapt]
    import tempfile

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="kill_loop_"))
    print(summary(run_series(target, adapt="--adapt" in sys.argv)))
