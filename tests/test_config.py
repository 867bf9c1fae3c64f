from pathlib import Path

import pytest
from pydantic import ValidationError

from sslray.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    builtin_configs,
    load_config,
    validate_raw,
)
from tests.conftest import tiny_raw


def test_misspelt_key_names_dotted_path_and_suggestion():
    with pytest.raises(ConfigError) as exc:
        validate_raw(tiny_raw(method={"name": "moco", "queue_sise": 64}))
    assert exc.value.problems == ["method.queue_sise: unknown key (did you mean 'queue_size'?)"]


def test_nested_misspelt_key_in_augment():
    with pytest.raises(ConfigError) as exc:
        validate_raw(tiny_raw(method={"name": "moco", "queue_size": 64, "augment": {"blurp": 1}}))
    assert exc.value.problems[0].startswith("method.augment.blurp: unknown key")


def test_wrong_type_and_range_name_the_key():
    with pytest.raises(ConfigError) as exc:
        validate_raw(tiny_raw(train={"epochs": "many", "batch_size": 32}, optim={"lr": -1}))
    text = "\n".join(exc.value.problems)
    assert "train.epochs:" in text and "optim.lr:" in text


def test_unknown_method_lists_registered():
    with pytest.raises(ConfigError) as exc:
        validate_raw(tiny_raw(method={"name": "simclr"}))
    assert exc.value.problems == [
        "method.name: unknown method 'simclr' (registered: byol, cc, jigsaw_pp, moco, supervised)"
    ]


def test_probe_layer_must_be_a_layer_of_the_backbone():
    """eval.layer is checked against the backbone the run builds, naming its layers."""
    with pytest.raises(ConfigError) as exc:
        validate_raw(tiny_raw(eval={"layer": "stage-3"}))  # the tiny trunk has 2 stages
    assert exc.value.problems == ["eval.layer: 'stage-3' is not a layer of backbone small_resnet; "
                                  "choose one of: final, stage-1, stage-2"]
    cfg = validate_raw(tiny_raw(backbone={"arch": "alexnet_small", "width": 8, "blocks": [1, 1, 3]},
                                eval={"layer": "conv4"}))
    assert cfg.eval.layer == "conv4"


def test_a_probe_layer_taps_any_methods_trunk():
    """probe_encoder(method, layer) reads that layer of the trunk (MoCo's query encoder here),
    pooled; "final" is the trunk itself."""
    import torch

    from sslray.methods import probe_encoder
    from sslray.models.taps import LayerFeatures
    from tests.conftest import build

    method = build(validate_raw(tiny_raw()))
    assert probe_encoder(method) is method.feature_encoder()
    tap = probe_encoder(method, "stage-2")
    assert isinstance(tap, LayerFeatures) and tap.backbone is method.feature_encoder()
    with torch.no_grad():
        assert tap(torch.randn(2, 3, 16, 16)).shape == (2, 8)  # the first stage, width 8


def test_a_probe_pools_the_last_map_over_a_grid():
    """eval.pool_grid g: the probes read the last map averaged over g x g regions, exactly what a
    trunk built with backbone.pool_grid g outputs (same weights), and the random init alike;
    layers other than "final" are pooled over the grid too; a tower with no map is refused."""
    import torch

    from sslray.methods import probe_encoder
    from sslray.models.backbones import build_backbone
    from sslray.models.taps import LayerFeatures
    from tests.conftest import build

    cfg = validate_raw(tiny_raw(eval={"pool_grid": 2}))
    method = build(cfg)
    probe = probe_encoder(method, "final", cfg.eval.pool_grid)
    assert isinstance(probe, LayerFeatures) and probe.backbone is method.feature_encoder()
    gridded = build_backbone(validate_raw(tiny_raw(backbone={"pool_grid": 2})).backbone)
    gridded.load_state_dict(method.feature_encoder().state_dict())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        method.feature_encoder().eval(), gridded.eval()
        assert torch.allclose(probe(x), gridded(x))  # 16 channels x 2 x 2
        assert probe(x).shape == (3, 64) and probe.out_dim == 64
        early = probe_encoder(method, "stage-2", 3)(x)  # the first stage (8 ch, 16 px), 3 x 3
    assert early.shape == (3, 72)
    stem = method.feature_encoder().stem(x)
    first = method.feature_encoder().stages[0](stem)
    assert torch.allclose(early, torch.nn.functional.adaptive_avg_pool2d(first, 3).flatten(1))
    with pytest.raises(ConfigError, match="eval.pool_grid"):
        validate_raw(tiny_raw(eval={"pool_grid": 0}))


def test_queue_must_hold_whole_batches():
    with pytest.raises(ConfigError, match="queue_size"):
        validate_raw(tiny_raw(method={"name": "moco", "queue_size": 70}))


def test_configs_are_frozen(tiny):
    with pytest.raises(ValidationError):
        tiny.seed = 3  # type: ignore[misc]


def test_overrides_parse_yaml_values_and_do_not_mutate_input():
    raw = tiny_raw()
    sets = ["train.epochs=7", "method.temperature=0.5", "backbone.blocks=[2, 2]"]
    out = apply_overrides(raw, sets)
    cfg = validate_raw(out)
    assert (cfg.train.epochs, cfg.method.temperature, cfg.backbone.blocks) == (7, 0.5, (2, 2))
    assert raw["train"]["epochs"] == 2


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides(tiny_raw(), ["seed.x=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(tiny_raw(), ["seed"])


def test_malformed_yaml_names_file_and_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert str(bad) in str(exc.value) and "line" in str(exc.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("does/not/exist.yaml")


def test_builtin_configs_validate_and_smoke():
    assert "fmnist_moco_v2" in builtin_configs()
    for name in builtin_configs():
        cfg = load_config(name)
        smoke = cfg.smoke()
        assert smoke.train.epochs == 1 and smoke.data.train_subset <= 256


def test_derived_values():
    cfg = validate_raw(tiny_raw(optim={"lr": 0.03}, train={"epochs": 1, "batch_size": 512},
                                method={"name": "moco", "queue_size": 1024}))
    assert cfg.effective_lr == pytest.approx(0.06)  # 0.03 * 512 / 256
    assert RunConfig.model_validate_json(cfg.to_json()) == cfg


def test_paper_probe_on_image_folders_is_accepted():
    cfg = validate_raw(tiny_raw(data={"dataset": "imagefolder"}, eval={"linear_paper_epochs": 5}))
    assert cfg.data.dataset == "imagefolder" and cfg.eval.linear_paper_epochs == 5


def test_transfer_dataset_must_differ_from_the_training_set():
    with pytest.raises(ConfigError, match="eval.transfer: 'synthetic' cannot be a transfer"):
        validate_raw(tiny_raw(eval={"transfer": ["synthetic"]}))
    assert validate_raw(tiny_raw(eval={"transfer": ["digits"]})).eval.transfer == ("digits",)
