"""Fine-tuning a pretrained CAM++ (``campplus_finetune``): the weights really load, the frozen phase and the frozen
batch-norm statistics keep what they should, the backbone's own learning rate and the class-mean head start.

A tiny CAM++-shaped model folder is made in each test (no download): the recipe's own front end and head, a
smaller network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_helpers import randomise_batch_norm

from mvector.checkpoint import save_checkpoint
from mvector.config import load_config
from mvector.data.synthetic import generate_corpus
from mvector.errors import ConfigError
from mvector.evaluation.evaluator import EvalSettings, Evaluator
from mvector.training.trainer import MVectorTrainer

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

#: A small CAM++ (the recipe's 80-bin Fbank front end) and a training that runs in seconds.
TINY = {
    "model_conf.fcm_channels": 16,  # below 16 the CPU backward of the 2-D front end crashes (torch 2.13)
    "model_conf.init_channels": 16,
    "model_conf.growth_rate": 8,
    "model_conf.bn_size": 2,
    "model_conf.num_layers": [2, 2, 2],
    "model_conf.embd_dim": 16,
    "dataset_conf.batch_size": 4,
    "dataset_conf.eval_batch_size": 8,
    "dataset_conf.max_duration": 1.0,
    "dataset_conf.num_workers": 0,
    "train_conf.log_backend": "none",
}


def _bn_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k or "num_batches" in k}


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in module.named_parameters()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft_corpus")
    train = generate_corpus(root / "train", 4, 4, seed=0, min_duration=1.0, max_duration=1.4)
    test = generate_corpus(root / "test", 3, 3, seed=1, min_duration=1.0, max_duration=1.4)
    return {"train": train, "test": test}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A CAM++-shaped model folder (backbone only, as ``mvector import`` writes) with non-trivial batch-norm
    statistics, so that "unchanged" is a real check."""
    folder = tmp_path_factory.mktemp("ft_pretrained") / "campplus"
    conf = load_config("campplus_finetune", TINY)
    trainer = MVectorTrainer(conf, use_gpu=False)
    torch.manual_seed(7)
    backbone = randomise_batch_norm(trainer.build_embedding_model().backbone)
    save_checkpoint(folder, model_state=backbone.state_dict(), config=conf, epoch=0, step=0, best_eer=None)
    return folder


def _trainer(corpus, **extra) -> MVectorTrainer:
    overrides = {**TINY, "dataset_conf.train_list": str(corpus["train"]), "dataset_conf.test_list": str(corpus["test"])}
    trainer = MVectorTrainer("campplus_finetune", use_gpu=False, overrides={**overrides, **extra})
    trainer.setup_data()
    trainer.setup_model()
    trainer.setup_optimizer()
    return trainer


def test_train_py_loads_the_pretrained_backbone_and_a_frozen_epoch_keeps_it(corpus, pretrained, tmp_path):
    """``python train.py --configs campplus_finetune --pretrained_model DIR``: the log names the loaded tensors, and
    after one frozen epoch the saved backbone (weights and batch-norm statistics) is the pretrained one, bit for
    bit, with a head for the 4 new speakers."""
    flags = [f"--{k}={v}" for k, v in TINY.items() if k != "model_conf.num_layers"]
    flags += ["--model_conf.num_layers=[2, 2, 2]", f"--dataset_conf.train_list={corpus['train']}"]
    flags += [f"--dataset_conf.test_list={corpus['test']}", "--train_conf.max_epoch=1"]
    flags += ["--train_conf.freeze_backbone_epochs=1", "--train_conf.head_init=random"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    save = tmp_path / "models"
    cmd = [sys.executable, str(ROOT / "train.py"), "--configs", "campplus_finetune", "--use_gpu", "False"]
    cmd += ["--pretrained_model", str(pretrained), "--save_model_path", str(save), *flags]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    source = torch.load(pretrained / "model.pt", weights_only=True)
    assert f"loaded {len(source)} backbone tensors" in proc.stdout
    trained_dir = save / "CAMPPlus_Fbank" / "last_model"
    trained = torch.load(trained_dir / "model.pt", weights_only=True)
    assert source.keys() == trained.keys()
    assert all(torch.equal(source[k], trained[k]) for k in source)
    assert torch.load(trained_dir / "head.pt", weights_only=True)["weight"].shape == (4, 16)


def test_without_pretrained_weights_the_backbone_differs(corpus, pretrained):
    """The check above can fail: a trainer that is not given the folder starts elsewhere."""
    source = torch.load(pretrained / "model.pt", weights_only=True)
    trainer = _trainer(corpus)
    own = trainer.model.backbone.state_dict()
    assert not all(torch.equal(source[k], own[k]) for k in source)
    trainer.restore(pretrained_model=pretrained)
    own = trainer.model.backbone.state_dict()
    assert all(torch.equal(source[k], own[k]) for k in source)


def test_freeze_backbone_bn_keeps_the_statistics_while_the_weights_learn(corpus, pretrained):
    trainer = _trainer(corpus, **{"train_conf.freeze_backbone_epochs": 0, "train_conf.freeze_backbone_bn": True})
    trainer.restore(pretrained_model=pretrained)
    stats, weights = _bn_stats(trainer.model.backbone), _weights(trainer.model.backbone)
    trainer.train_epoch(1)
    assert _same(stats, _bn_stats(trainer.model.backbone))
    assert not _same(weights, _weights(trainer.model.backbone))
    # the same epoch with the key off moves the statistics: the key is what keeps them
    other = _trainer(corpus, **{"train_conf.freeze_backbone_epochs": 0, "train_conf.freeze_backbone_bn": False})
    other.restore(pretrained_model=pretrained)
    other.train_epoch(1)
    assert not _same(stats, _bn_stats(other.model.backbone))


def test_a_frozen_epoch_keeps_weights_and_statistics_then_training_moves_them(corpus, pretrained):
    trainer = _trainer(corpus, **{"train_conf.freeze_backbone_epochs": 1, "train_conf.freeze_backbone_bn": False})
    trainer.restore(pretrained_model=pretrained)
    stats, weights, head = _bn_stats(trainer.model.backbone), _weights(trainer.model.backbone), _weights(trainer.head)
    trainer.train_epoch(1)
    assert _same(stats, _bn_stats(trainer.model.backbone)) and _same(weights, _weights(trainer.model.backbone))
    assert not _same(head, _weights(trainer.head))
    trainer.train_epoch(2)
    assert not _same(weights, _weights(trainer.model.backbone))


def test_backbone_lr_scale_gives_the_backbone_its_own_rate(corpus):
    trainer = _trainer(corpus, **{"optimizer_conf.backbone_lr_scale": 0.1, "optimizer_conf.warmup_epochs": 0})
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2
    backbone = {id(p) for p in trainer.model.backbone.parameters()}
    head = {id(p) for p in trainer.head.parameters()}
    assert {id(p) for p in groups[0]["params"]} == backbone and {id(p) for p in groups[1]["params"]} == head
    rate = float(trainer.configs["optimizer_conf"]["learning_rate"])
    assert groups[0]["lr"] == pytest.approx(0.1 * rate) and groups[1]["lr"] == pytest.approx(rate)
    for _ in range(3):  # the schedule moves both groups alike
        trainer.scheduler.step()
    assert groups[0]["lr"] / groups[1]["lr"] == pytest.approx(0.1, rel=0.05)
    assert len(_trainer(corpus, **{"optimizer_conf.backbone_lr_scale": 1.0}).optimizer.param_groups) == 1
    with pytest.raises(ConfigError, match="backbone_lr_scale"):
        load_config("campplus_finetune", {"optimizer_conf.backbone_lr_scale": -1})


def test_head_init_class_means_starts_each_row_at_its_speakers_mean_embedding(corpus, pretrained):
    trainer = _trainer(corpus, **{"train_conf.head_init": "class_means"})
    random_rows = trainer.head.weight.detach().clone()
    trainer.restore(pretrained_model=pretrained)
    rows = trainer.head.weight.detach()
    assert not torch.equal(rows, random_rows)
    # recomputed outside the trainer: each file embedded by the evaluator, normalised, averaged per speaker
    lines = [line.split("\t") for line in Path(corpus["train"]).read_text().splitlines()]
    paths = [str(Path(corpus["train"]).parent / p) for p, _ in lines]
    labels = torch.tensor([int(label) for _, label in lines])
    ds = trainer.configs["dataset_conf"]
    emb = Evaluator(trainer.embedding_model.eval(), EvalSettings.from_dataset_conf(ds), progress=False)
    vectors = torch.nn.functional.normalize(torch.as_tensor(emb.embed_paths(paths).vectors), dim=1)
    for speaker in range(4):
        mean = torch.nn.functional.normalize(vectors[labels == speaker].mean(0), dim=0)
        assert torch.allclose(rows[speaker], mean, atol=1e-5)
    # the head classifies the training clips from the first step (well above the 1 in 4 of chance, even with this
    # untrained tiny backbone)
    with torch.no_grad():
        logits = torch.nn.functional.linear(vectors, torch.nn.functional.normalize(rows, dim=1))
    assert (logits.argmax(1) == labels).float().mean() >= 0.5
    with pytest.raises(ConfigError, match="head_init"):
        load_config("campplus_finetune", {"train_conf.head_init": "means"})


def test_the_bundled_recipe_sets_the_fine_tuning_keys():
    conf = load_config("campplus_finetune")
    tc, oc = conf["train_conf"], conf["optimizer_conf"]
    assert tc["head_init"] == "class_means" and tc["freeze_backbone_bn"] is True
    assert tc["freeze_backbone_epochs"] == 0 and oc["warmup_epochs"] == 0
    assert conf["loss_conf"]["margin"] == 0.2 and conf["loss_conf"].get("margin_scheduler") is None
    default = load_config("ecapa_tdnn")
    assert default["train_conf"]["head_init"] == "random" and default["optimizer_conf"]["backbone_lr_scale"] == 1.0
    assert default["train_conf"]["freeze_backbone_bn"] is False


def test_the_recipe_front_end_is_the_imported_models():
    """What the weights mean: the recipe's front end, normalisation and model equal those an import writes."""
    from mvector.build import EMBEDDING_KEYS, build_embedding_model
    from mvector.pretrained import catalogue_entry
    from mvector.pretrained.importer import pretrained_config

    imported, recipe = pretrained_config(catalogue_entry("campplus_zh_en")), load_config("campplus_finetune")
    for key in EMBEDDING_KEYS:
        section, _, name = key.partition(".")
        if name:
            assert imported[section][name] == recipe[section][name], key
    model_a, model_b = build_embedding_model(imported), build_embedding_model(recipe)
    assert repr(model_a) == repr(model_b)  # the same featurizer and backbone, argument for argument
    assert model_a.backbone.state_dict().keys() == model_b.backbone.state_dict().keys()
    wave = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fa = model_a.featurizer(wave, torch.tensor([16000]))[0]
        fb = model_b.featurizer(wave, torch.tensor([16000]))[0]
    assert torch.equal(fa, fb)
