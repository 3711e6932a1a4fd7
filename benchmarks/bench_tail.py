"""The low-false-alarm tail of trained models on a generated corpus: which impostors score high, and what post-hoc
remedies (score normalisation with a training-speaker cohort, centring / whitening with training statistics,
checkpoint averaging) do to EER, minDCF(0.01 / 0.001) and FRR at FAR 1 % / 0.1 %, each with a speaker-bootstrap
interval.

Takes model folders that ``bench_accuracy.py --corpus C --keep-models DIR`` kept (``DIR/<recipe>``, holding
``<Model>_<Feature>/last_model`` and the last epochs' ``epoch_N``) and the corpus they were trained on
(``train_list.txt``, ``dev_trials.txt``, ``dev_utterances.tsv`` / ``dev_speakers.tsv`` of
``../shared/tools/corpus``)::

    python benchmarks/bench_tail.py --corpus /work/corpus23 \
        --models default=/work/m23/default,seed_like=/work/m23/seed_like

Every remedy is scored on the same embeddings of the same trials, so the rows of one model differ only by the
remedy. ``--cohort-speeds 0.9,1.1`` adds AS-norm rows against the training clips also played at those speeds
(``score_norm_conf.cohort_speeds``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import add_repo_to_path, emit, machine_info

add_repo_to_path()

from mvector.data.lists import load_utterances  # noqa: E402
from mvector.embedding.backends import TorchBackend, open_backend  # noqa: E402
from mvector.evaluation.evaluator import EvalSettings, Evaluator  # noqa: E402
from mvector.evaluation.metrics import compute_min_dcf  # noqa: E402
from mvector.evaluation.score_norm import ScoreNorm, cohort_subset  # noqa: E402
from mvector.evaluation.scoring import as_norm, read_trials  # noqa: E402
from mvector.evaluation.uncertainty import tail_metrics  # noqa: E402


def average_checkpoints(embedder: TorchBackend, folders: list[Path]) -> TorchBackend:
    """``embedder`` with its model's weights replaced by the mean of the weights in ``folders`` (checkpoints of
    one run; integer buffers such as batch counters are taken from the last)."""
    states = [TorchBackend(f).model.state_dict() for f in folders]
    merged = {}
    for key, value in states[-1].items():
        merged[key] = sum(s[key].double() for s in states) / len(states) if value.is_floating_point() else value
    embedder.model.load_state_dict({k: v.to(states[-1][k].dtype) for k, v in merged.items()})
    return embedder


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _model_dir(folder: Path) -> Path:
    """``folder`` itself when it holds ``last_model``, else its one ``<Model>_<Feature>`` child that does."""
    if (folder / "last_model").is_dir():
        return folder
    found = [p for p in folder.iterdir() if (p / "last_model").is_dir()]
    if len(found) != 1:
        raise SystemExit(f"{folder}: expected one model folder holding last_model, found {len(found)}")
    return found[0]


def _rounded(m: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in m.items():
        if isinstance(v, float):
            out[k] = round(v, 5)
        elif isinstance(v, list):
            out[k] = [round(float(x), 5) for x in v]
        else:
            out[k] = v
    return out


def impostor_study(
    scores: np.ndarray, labels: np.ndarray, a: list[str], b: list[str], utt: dict[str, dict], spk: dict[str, dict]
) -> dict[str, Any]:
    """What the non-target pairs above the FAR-1 % threshold share, against all non-target pairs: same family,
    source, engine, sex, pitch setting, channel-effect kind, speaking-rate group."""
    non = ~labels.astype(bool)
    s_non = scores[non]
    idx = np.flatnonzero(non)
    cut = np.quantile(s_non, 0.99)
    top = idx[scores[idx] >= cut]

    def pitch(name: str) -> str:
        tail = name.rsplit("-p", 1)
        return tail[1] if len(tail) == 2 and tail[1].isdigit() else ""

    def effect_kinds(u: dict) -> frozenset:
        text = u.get("effects") or ""
        return frozenset("".join(ch for ch in part if ch.isalpha()) for part in text.split(",") if part)

    def rate_group(u: dict) -> int:
        return int(np.digitize(float(u.get("stretch") or 1.0), [0.95, 1.05]))

    tests = {
        "same_family": lambda ua, ub, sa, sb: sa["family"] == sb["family"],
        "same_source": lambda ua, ub, sa, sb: sa["source"] == sb["source"],
        "same_engine_voice": lambda ua, ub, sa, sb: ua["engine"] == ub["engine"] and ua["voice"] == ub["voice"],
        "same_engine": lambda ua, ub, sa, sb: ua["engine"] == ub["engine"],
        "same_sex": lambda ua, ub, sa, sb: sa["sex"] == sb["sex"] and sa["sex"] != "?",
        "same_pitch_setting": lambda ua, ub, sa, sb: pitch(sa["speaker"]) != "" and pitch(sa["speaker"]) == pitch(
            sb["speaker"]
        ),
        "same_effect_kinds": lambda ua, ub, sa, sb: effect_kinds(ua) == effect_kinds(ub),
        "no_effect_either": lambda ua, ub, sa, sb: not ua.get("effects") and not ub.get("effects"),
        "same_rate_group": lambda ua, ub, sa, sb: rate_group(ua) == rate_group(ub),
    }

    def shares(rows: np.ndarray) -> dict[str, float]:
        out = {}
        for name, fn in tests.items():
            hits = 0
            for i in rows:
                ua, ub = utt[a[i]], utt[b[i]]
                hits += bool(fn(ua, ub, spk[ua["label"]], spk[ub["label"]]))
            out[name] = hits / max(1, len(rows))
        return out

    all_share, top_share = shares(idx), shares(top)
    pairs: dict[tuple[str, str], int] = {}
    for i in top:
        key = tuple(sorted((utt[a[i]]["speaker"], utt[b[i]]["speaker"])))
        pairs[key] = pairs.get(key, 0) + 1
    worst = sorted(pairs.items(), key=lambda kv: -kv[1])[:12]
    return {
        "threshold_far_1%": round(float(cut), 4),
        "top_nontargets": int(top.size),
        "share_among_top_1%": {k: round(v, 3) for k, v in top_share.items()},
        "share_among_all_nontargets": {k: round(v, 3) for k, v in all_share.items()},
        "lift": {k: round(top_share[k] / max(all_share[k], 1e-9), 2) for k in tests},
        "speaker_pairs_most_often_in_top": [{"pair": list(k), "trials": v} for k, v in worst],
    }


def study_model(
    name: str, folder: Path, corpus: Path, rounds: int, average: int, top_ks: list[int], speeds: list[float] = ()
) -> dict:
    model_dir = _model_dir(folder)
    trials = read_trials(corpus / "dev_trials.txt")
    dev_paths = sorted({p for _, x, y in trials for p in (x, y)})
    train_utts = load_utterances(str(corpus / "train_list.txt"))
    embedder = open_backend(model_dir / "last_model", "torch")
    settings = EvalSettings.from_dataset_conf(embedder.config["dataset_conf"])
    t0 = time.perf_counter()
    evaluator = Evaluator(embedder, settings, progress=False, log=lambda m: print(m, file=sys.stderr))
    dev = evaluator.embed_paths(dev_paths, "dev")
    train = evaluator.embed_paths([u.path for u in train_utts], "train")
    embed_s = time.perf_counter() - t0
    index = {p: i for i, p in enumerate(dev_paths)}
    pairs = np.array([(index[x], index[y]) for _, x, y in trials])
    labels = np.array([lab for lab, _, _ in trials])
    rel = {p: str(Path(p).relative_to(corpus)) if Path(p).is_absolute() else p for p in dev_paths}
    utt = {r["path"]: r for r in _read_tsv(corpus / "dev_utterances.tsv")}
    spk = {r["label"]: r for r in _read_tsv(corpus / "dev_speakers.tsv")}
    a = [rel[dev_paths[i]] for i in pairs[:, 0]]
    b = [rel[dev_paths[j]] for j in pairs[:, 1]]
    spk_a = [utt[x]["speaker"] for x in a]
    spk_b = [utt[x]["speaker"] for x in b]
    train_labels = np.array([u.label for u in train_utts])[train.ok]
    train_vecs = train.vectors[train.ok]

    def figures(scores: np.ndarray) -> dict:
        return _rounded(tail_metrics(scores, labels, spk_a, spk_b, rounds=rounds))

    rows: dict[str, dict] = {}
    unit = _unit(dev.vectors)
    cosine = np.sum(unit[pairs[:, 0]] * unit[pairs[:, 1]], axis=1)
    rows["cosine"] = figures(cosine)
    norm_centre = ScoreNorm.fit(train_vecs, train_labels, whiten=False, cohort="speakers")
    norm_whiten = ScoreNorm.fit(train_vecs, train_labels, whiten=True, cohort="speakers")
    for label, sn in (("centred", norm_centre), ("whitened", norm_whiten)):
        t = sn.transform(dev.vectors)
        rows[label] = figures(np.sum(t[pairs[:, 0]] * t[pairs[:, 1]], axis=1))
    spk_cohort = ScoreNorm.fit(train_vecs, train_labels, whiten=False, centre=False, cohort="speakers").cohort
    for k in top_ks:
        rows[f"as_norm_speakers_top{k}"] = figures(
            as_norm(cosine, unit[pairs[:, 0]], unit[pairs[:, 1]], spk_cohort, top_k=k)
        )
    for k in top_ks:
        rows[f"as_norm_utterances_top{k}"] = figures(
            as_norm(cosine, unit[pairs[:, 0]], unit[pairs[:, 1]], _unit(train_vecs), top_k=k)
        )
    if speeds:  # the cohort's clips also at other speeds (score_norm_conf.cohort_speeds)
        paths = [u.path for u in train_utts]
        extra = [evaluator.embed_paths(paths, f"train at speed {v:g}", speed=v) for v in speeds if v != 1.0]
        cohort = np.concatenate([train_vecs] + [e.vectors[e.ok] for e in extra])
        label = "+".join(f"{v:g}" for v in sorted({1.0, *speeds}))
        for k in top_ks:
            rows[f"as_norm_utterances_speeds_{label}_top{k}"] = figures(
                as_norm(cosine, unit[pairs[:, 0]], unit[pairs[:, 1]], _unit(cohort), top_k=k)
            )
    for label, sn in (("centred", norm_centre), ("whitened", norm_whiten)):
        for k in top_ks:
            rows[f"{label}+as_norm_speakers_top{k}"] = figures(sn.score_pairs(dev.vectors, pairs, top_k=k))
    whiten_utt = ScoreNorm.fit(train_vecs, train_labels, whiten=True, cohort="utterances")
    for k in top_ks:
        rows[f"whitened+as_norm_utterances_top{k}"] = figures(whiten_utt.score_pairs(dev.vectors, pairs, top_k=k))
    sub = cohort_subset(train_labels.tolist(), 8)  # what training stores by default (max_per_speaker 8)
    for label, whiten in (("whitened", True), ("centred", False)):
        sn = ScoreNorm.fit(train_vecs[sub], train_labels[sub], whiten=whiten, cohort="utterances")
        rows[f"{label}+as_norm_utterances_top{top_ks[0]}_8_per_speaker"] = figures(
            sn.score_pairs(dev.vectors, pairs, top_k=top_ks[0])
        )
    out: dict[str, Any] = {"model": str(model_dir), "embed_s": round(embed_s, 1), "remedies": rows}
    out["impostors_cosine"] = impostor_study(cosine, labels, a, b, utt, spk)
    best = min((k for k in rows if k != "cosine"), key=lambda k: rows[k]["min_dcf_0.01"])
    out["best_by_min_dcf_0.01"] = best
    out["impostors_whitened"] = impostor_study(
        (lambda t: np.sum(t[pairs[:, 0]] * t[pairs[:, 1]], axis=1))(norm_whiten.transform(dev.vectors)),
        labels, a, b, utt, spk,
    )
    if average > 1:
        epochs = sorted(model_dir.glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))[-average:]
        if len(epochs) == average:
            avg = average_checkpoints(open_backend(model_dir / "last_model", "torch"), epochs)
            ev = Evaluator(avg, settings, progress=False)
            dev_avg, train_avg = ev.embed_paths(dev_paths), ev.embed_paths([u.path for u in train_utts])
            ua = _unit(dev_avg.vectors)
            rows[f"average_last_{average}"] = figures(np.sum(ua[pairs[:, 0]] * ua[pairs[:, 1]], axis=1))
            sn = ScoreNorm.fit(train_avg.vectors[train_avg.ok], train_labels, whiten=False, cohort="speakers")
            rows[f"average_last_{average}+centred+as_norm_speakers_top{top_ks[0]}"] = figures(
                sn.score_pairs(dev_avg.vectors, pairs, top_k=top_ks[0])
            )
        else:
            out["average_skipped"] = f"{len(epochs)} epoch_N folders in {model_dir}, {average} needed"
    out["min_dcf_0.01_of_raw_cosine_recheck"] = round(compute_min_dcf(cosine, labels)[0], 5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="the generated corpus the models were trained on")
    parser.add_argument("--models", required=True, help="name=FOLDER,... (folders kept by bench_accuracy)")
    parser.add_argument("--rounds", type=int, default=200, help="speaker-bootstrap rounds per interval")
    parser.add_argument("--average", type=int, default=3, help="average the last N epoch checkpoints (0: off)")
    parser.add_argument("--top-k", default="20,50", help="AS-norm cohort sizes to try (comma list)")
    parser.add_argument(
        "--cohort-speeds",
        default="",
        help="also score AS-norm against the training clips at these speeds too, e.g. 0.9,1.1",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = Path(args.corpus)
    top_ks = [int(k) for k in args.top_k.split(",") if k.strip()]
    speeds = [float(v) for v in args.cohort_speeds.split(",") if v.strip()]
    load_start = machine_info(["load_average"])["load_average"]
    t0 = time.perf_counter()
    report: dict[str, Any] = {"benchmark": f"bench_tail (dev_trials.txt of {corpus})", "models": {}}
    for item in args.models.split(","):
        name, _, folder = item.partition("=")
        report["models"][name] = study_model(name, Path(folder), corpus, args.rounds, args.average, top_ks, speeds)
        print(f"{name}: done", file=sys.stderr, flush=True)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    report["machine"] = {**machine_info(), "load_average_at_start": load_start}
    emit(report)


if __name__ == "__main__":
    main()
