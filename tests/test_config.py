"""Configuration: bundled names, defaults, legacy spellings, overrides with types, strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mvector.config import (
    CONFIG_DIR,
    DEFAULT_CONFIG,
    SCHEMA,
    apply_overrides,
    bundled_configs,
    defaults,
    describe_schema,
    load_config,
    parse_overrides,
    parse_value,
    save_config,
)
from mvector.errors import ConfigError
from mvector.features import FEATURIZERS

ORIGINAL_README_SNIPPET = """
preprocess_conf:
  feature_method: 'MelSpectrogram'
feature_conf:
  sample_rate: 16000
  n_fft: 1024
  hop_length: 320
  win_length: 1024
  f_min: 50.0
  f_max: 14000.0
  n_mels: 64
"""


def test_bundled_configs_load_and_validate():
    assert set(bundled_configs()) >= {"ecapa_tdnn", "tdnn", "res2net", "resnet_se"}
    for name in bundled_configs():
        conf = load_config(name)
        assert conf["preprocess_conf"]["feature_method"] in FEATURIZERS
        assert conf["dataset_conf"]["sample_rate"] == 16000
    assert load_config("ecapa_tdnn")["preprocess_conf"]["feature_method"] == "MelSpectrogram"  # docs/accuracy.md


def test_original_readme_snippets_load(tmp_path):
    path = tmp_path / "old.yml"
    path.write_text(ORIGINAL_README_SNIPPET)
    conf = load_config(path)
    assert conf["preprocess_conf"]["feature_method"] == "MelSpectrogram"
    assert conf["feature_conf"]["n_mels"] == 64
    mfcc = yaml.safe_load(ORIGINAL_README_SNIPPET)
    mfcc["preprocess_conf"]["feature_method"] = "MFCC"
    mfcc["feature_conf"]["n_mfcc"] = 40
    assert load_config(mfcc)["feature_conf"]["n_mfcc"] == 40


def test_legacy_spellings_are_mapped():
    conf = load_config(
        {
            "dataset_conf": {"chunk_duration": 2.0, "eval_conf": {"batch_size": 4, "max_duration": 10}},
            "model_conf": {"model": "TDNN", "model_args": {"embd_dim": 128}},
            "loss_conf": {
                "loss": "AMLoss",
                "loss_args": {"margin": 0.3, "scale": 30},
                "use_margin_scheduler": True,
                "margin_scheduler_args": {"initial_margin": 0.0, "final_margin": 0.3},
            },
        }
    )
    assert conf["dataset_conf"]["max_duration"] == 2.0
    assert conf["dataset_conf"]["eval_batch_size"] == 4
    assert conf["dataset_conf"]["eval_max_duration"] == 10.0
    assert conf["use_model"] == "TDNN" and conf["model_conf"] == {"embd_dim": 128}
    assert conf["use_loss"] == "AMLoss" and conf["loss_conf"]["margin"] == 0.3
    assert conf["loss_conf"]["margin_scheduler"] == {"initial_margin": 0.0, "final_margin": 0.3}


def test_every_key_has_a_documented_default():
    table = describe_schema()
    for section, spec in SCHEMA.items():
        if isinstance(spec, dict):
            for key, item in spec.items():
                assert item.doc, f"{section}.{key} has no doc"
                assert f"| {section}.{key} |" in table


def test_the_default_config_lists_every_fixed_key():
    raw = yaml.safe_load((CONFIG_DIR / f"{DEFAULT_CONFIG}.yml").read_text())
    for section, spec in SCHEMA.items():
        if isinstance(spec, dict):
            assert set(raw[section]) == set(spec), section
        else:
            assert section in raw
    assert defaults() == load_config(DEFAULT_CONFIG)
    from mvector.build import model_name
    from mvector.config import DEFAULT_MODEL_PATH

    assert DEFAULT_MODEL_PATH == f"models/{model_name(defaults())}/best_model"  # where the default recipe saves


def test_a_partial_yaml_gets_the_documented_defaults(tmp_path):
    """What a file leaves out is the bundled default's, the README's table and train --help say so."""
    path = tmp_path / "partial.yml"
    path.write_text("dataset_conf:\n  batch_size: 16\ntrain_conf:\n  amp: true\n")
    conf, reference = load_config(path), load_config(DEFAULT_CONFIG)
    assert conf["dataset_conf"]["batch_size"] == 16 and conf["train_conf"]["amp"] is True
    conf["dataset_conf"]["batch_size"], conf["train_conf"]["amp"] = 32, False
    assert conf == reference
    # The recipe, not the seed's: the mel front end, batch 32, no warm-up, AS-norm, speed + volume augmentation.
    assert reference["preprocess_conf"]["feature_method"] == "MelSpectrogram"
    assert reference["feature_conf"]["hop_length"] == 320 and reference["optimizer_conf"]["warmup_epochs"] == 0
    assert reference["score_norm_conf"]["cohort"] == "utterances" and set(reference["augment_conf"]) == {
        "speed",
        "volume",
    }
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert describe_schema() in readme
    from mvector.cli.train import build_parser

    assert f"default: {DEFAULT_CONFIG}" in " ".join(build_parser("mvector train").format_help().split())


def test_free_sections_are_taken_whole():
    fbank = load_config({"preprocess_conf": {"feature_method": "Fbank"}})
    assert fbank["feature_conf"] == {}  # not the mel front end's n_fft / hop_length
    assert load_config({"use_model": "TDNN"})["model_conf"] == {}
    assert load_config({"model_conf": {"channels": 256}})["model_conf"] == {"channels": 256}
    # A written section keeps its meaning (a saved model's config): the class's defaults fill it, not the recipe's.
    mel = load_config({"feature_conf": {"n_mels": 80}})
    assert mel["feature_conf"] == {"n_mels": 80}
    assert load_config({"use_loss": "AAM"})["loss_conf"] == load_config(DEFAULT_CONFIG)["loss_conf"]
    assert load_config({"augment_conf": {}})["augment_conf"] == {}
    assert load_config({"augment_conf": None})["augment_conf"] == {}
    noise_only = load_config({"augment_conf": {"volume": {"prob": 1.0}}})["augment_conf"]
    assert set(noise_only) == {"volume"}  # a given augment_conf replaces the default's whole


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1e-5", 1e-5),
        ("32", 32),
        ("-3", -3),
        ("0.5", 0.5),
        ("true", True),
        ("False", False),
        ("null", None),
        ("[0.9, 1.0, 1.1]", [0.9, 1.0, 1.1]),
        ("Fbank", "Fbank"),
        (".5", 0.5),
        ("1E3", 1000.0),
    ],
)
def test_parse_value(text, expected):
    assert parse_value(text) == expected
    assert type(parse_value(text)) is type(expected)


def test_overrides_from_command_line_with_types():
    conf = load_config(
        "ecapa_tdnn",
        overrides=[
            "--dataset_conf.batch_size=32",
            "--optimizer_conf.learning_rate",
            "1e-5",
            "--train_conf.amp=true",
            "--model_conf.channels=1024",
            "--loss_conf.margin_scheduler.final_margin=0.3",
            "--dataset_conf.max_duration=2",
        ],
    )
    assert conf["dataset_conf"]["batch_size"] == 32
    assert conf["optimizer_conf"]["learning_rate"] == 1e-5
    assert conf["train_conf"]["amp"] is True
    assert conf["model_conf"]["channels"] == 1024
    assert conf["loss_conf"]["margin_scheduler"]["final_margin"] == 0.3
    assert conf["dataset_conf"]["max_duration"] == 2.0 and isinstance(conf["dataset_conf"]["max_duration"], float)


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"dataset_conf": {"batchsize": 3}}, ["batchsize", "batch_size"]),
        ({"datset_conf": {}}, ["datset_conf", "dataset_conf"]),
        ({"dataset_conf": {"batch_size": "many"}}, ["dataset_conf.batch_size", "integer"]),
        ({"train_conf": {"amp": 1}}, ["train_conf.amp", "true or false"]),
        ({"dataset_conf": {"batch_size": 0}}, ["batch_size", "positive"]),
        ({"optimizer_conf": {"optimizer": "Adagrad"}}, ["Adagrad"]),
        ({"dataset_conf": {"min_duration": 5.0, "max_duration": 2.0}}, ["min_duration"]),
    ],
)
def test_bad_fixed_keys_name_the_key(bad, words):
    with pytest.raises(ConfigError) as err:
        load_config(bad, validate=False)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"preprocess_conf": {"feature_method": "Fbank"}, "feature_conf": {"num_mel_binz": 80}}, ["num_mel_binz"]),
        ({"feature_conf": {"n_melz": 80}}, ["n_melz", "n_mels"]),
        ({"model_conf": {"chanels": 64}}, ["chanels", "channels"]),
        ({"loss_conf": {"scal": 30}}, ["scal", "scale"]),
        ({"use_model": "EcapaTdn"}, ["EcapaTdn", "EcapaTdnn"]),
        ({"use_loss": "AAN"}, ["AAN"]),
        ({"preprocess_conf": {"feature_method": "Fbnak"}}, ["Fbnak", "Fbank"]),
        ({"loss_conf": {"margin_scheduler": {"final_margn": 0.2}}}, ["final_margn", "final_margin"]),
    ],
)
def test_bad_free_keys_name_the_nearest_valid_key(bad, words):
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    for word in words:
        assert word in str(err.value)


def test_override_errors():
    with pytest.raises(ConfigError, match="batch_size"):
        load_config("ecapa_tdnn", overrides={"dataset_conf.batch_sise": "3"}, validate=False)
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--dataset_conf.batch_size"])
    with pytest.raises(ConfigError, match="whole section"):
        apply_overrides(defaults(), {"dataset_conf": "3"})


def test_unknown_bundled_name_suggests(tmp_path):
    with pytest.raises(ConfigError, match="ecapa_tdnn"):
        load_config("ecapa_tdn")
    broken = tmp_path / "broken.yml"
    broken.write_text("dataset_conf: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yml"):
        load_config(broken)


def test_save_and_reload_round_trip(tmp_path):
    conf = load_config("tdnn", overrides={"dataset_conf.batch_size": "7"})
    path = save_config(conf, tmp_path / "sub" / "config.yml")
    assert load_config(path) == conf
    assert not list(path.parent.glob(".*tmp*"))


def test_feature_sample_rate_must_agree():
    with pytest.raises(ConfigError, match="sample_rate"):
        load_config({"feature_conf": {"sample_rate": 8000}}, validate=False)


def test_a_bad_backbone_value_names_its_key():
    from mvector.build import build_embedding_model
    from mvector.config import load_config

    conf = load_config("ecapa_tdnn", {"model_conf.channels": "1x"}, validate=False)
    with pytest.raises(ConfigError, match=r"model_conf\.channels .*expected an integer, got '1x'"):
        build_embedding_model(conf)
