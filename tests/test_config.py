"""Config schema and loader: bad values fail at construction with one line naming the field;
YAML files, dotted overrides and ``section: file.yaml`` includes (docs/contracts.md §4)."""
import os

import pytest

from diffmamba.config import (ModelConfig, RunConfig, config_from_dict, load_config, to_dict)
from diffmamba.core.errors import ConfigError, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "model", "tiny.yaml")
SMALL = os.path.join(REPO, "configs", "model", "small.yaml")


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert isinstance(excinfo.value, UserError)  # the CLI prints it as one line, exit code 2
    return message


@pytest.mark.parametrize("values,field", [
    (dict(d_model=100, expand=1, headdim=64), "model.headdim"),  # d_inner 100 not divisible by 64
    (dict(mimo_rank=0), "model.mimo_rank"),
    (dict(rope_fraction=0.7), "model.rope_fraction"),
    (dict(tie="half"), "model.tie"),
    (dict(d_state=7), "model.d_state"),
])
def test_bad_model_values_name_the_field(values, field):
    with pytest.raises(ConfigError) as excinfo:
        ModelConfig(**values)
    assert one_line_error(excinfo).startswith(field)


def test_unknown_key_is_named_with_the_known_ones(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("d_model: 64\nd_modle: 32\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(ModelConfig, str(path))
    message = one_line_error(excinfo)
    assert "'d_modle'" in message and "d_model" in message
    with pytest.raises(ConfigError, match="model.n_layer'"):
        load_config(RunConfig, None, ["model.n_layer=3"])


def test_wrong_types_are_named():
    with pytest.raises(ConfigError, match="model.d_model: expected an integer"):
        load_config(RunConfig, None, ["model.d_model=1.5"])
    with pytest.raises(ConfigError, match="model.tie_embeddings: expected true or false"):
        load_config(RunConfig, None, ["model.tie_embeddings=maybe"])


def test_yaml_and_dotted_overrides(tmp_path):
    cfg = load_config(ModelConfig, TINY, ["d_model=64", "mimo_rank=2", "vocab_size=4096"])
    assert (cfg.d_model, cfg.mimo_rank, cfg.vocab_size, cfg.n_layers) == (64, 2, 4096, 4)
    assert cfg.vocab_size is not None and load_config(ModelConfig, TINY).vocab_size is None
    # overrides are parsed as YAML scalars
    run = load_config(RunConfig, None, ["train.lr=1e-3", "train.betas=[0.9, 0.95]", "model.tie=none"])
    assert run.train.lr == 1e-3 and run.train.betas == (0.9, 0.95) and run.model.tie == "none"


def test_section_include_and_its_overrides(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny.yaml").write_text(open(TINY).read())
    run_path = tmp_path / "run.yaml"
    run_path.write_text("model: model/tiny.yaml\ndata:\n  seq_len: 128\n")
    run = load_config(RunConfig, str(run_path), ["model.n_layers=2"])
    assert run.model.d_model == 128 and run.model.n_layers == 2 and run.data.seq_len == 128
    run_path.write_text("model: model/absent.yaml\n")
    with pytest.raises(ConfigError, match="absent.yaml does not exist"):
        load_config(RunConfig, str(run_path))


def test_cross_section_check():
    with pytest.raises(ConfigError, match="data.seq_len"):
        load_config(RunConfig, None, ["data.seq_len=2048", "model.max_seq_len=1024"])


def test_shipped_model_configs_load_and_round_trip():
    for path in (TINY, SMALL):
        cfg = load_config(ModelConfig, path)
        assert config_from_dict(ModelConfig, to_dict(cfg)) == cfg
    small = load_config(ModelConfig, SMALL)
    assert (small.d_model, small.n_layers, small.headdim, small.d_state, small.vocab_size) == (768, 12, 64, 128, 50257)


def test_an_infinite_or_nan_integer_override_is_a_config_error():
    """`.inf` / `1e999` parse as float infinity, which int() cannot take (found by the override fuzzer)."""
    for value in (".inf", "1e999", ".nan"):
        with pytest.raises(ConfigError, match="train.max_steps: expected an integer"):
            load_config(RunConfig, None, [f"train.max_steps={value}"])
