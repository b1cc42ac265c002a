"""QuantConfig / QuantizerConfig: from_dict (Hydra-style dicts) and one-line validation errors."""

import pytest

from sdq.errors import SdqConfigError
from sdq.quant import QuantConfig, QuantizerConfig


def test_from_dict_nested_and_null_parts():
    cfg = QuantConfig.from_dict({"name": "w4", "weight": {"bits": 4, "granularity": "channel"}, "act": None,
                                 "embedding": {"bits": 4, "granularity": "row"}, "attention": None,
                                 "skip": ["classifier"], "overrides": {r"layer\.11\.": {"bits": 8}},
                                 "quant_noise_p": 0.5, "quant_noise_block": 8}).validate()
    assert cfg.weight == QuantizerConfig(bits=4, granularity="channel") and cfg.act is None
    assert cfg.weight_config("roberta.encoder.layer.11.output.dense", cfg.weight).bits == 8
    assert cfg.weight_config("roberta.encoder.layer.1.output.dense", cfg.weight).bits == 4
    assert cfg.weight_config("classifier.dense", cfg.weight) is None
    assert QuantConfig.from_dict({}).skip == ["classifier"] and not QuantConfig.from_dict(None).enabled
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg


BAD = [
    ({"weight": {"bits": 0}}, r"quant\.weight\.bits=0 is not supported"),
    ({"weight": {"bits": 9}}, r"quant\.weight\.bits=9"),
    ({"embedding": {"bits": 33}}, r"quant\.embedding\.bits=33"),
    ({"act": {"bits": -2}}, r"quant\.act\.bits=-2"),
    ({"weight": {"bits": True}}, r"bits=True"),
    ({"weight": {"bits": 4, "scheme": "log"}}, r"scheme='log' is unknown; choose one of: uniform, lsq"),
    ({"weight": {"bits": 4, "granularity": "block"}}, r"granularity='block' is unknown"),
    ({"weight": {"bits": 4, "observer": "max"}}, r"observer='max' is unknown"),
    ({"weight": {"bits": 4, "granularity": "group"}}, r"granularity=group needs a positive integer group_size"),
    ({"weight": {"bits": 4, "group_size": 32}}, r"group_size=32 only applies to granularity=group"),
    ({"weight": {"bits": 1, "scheme": "lsq"}}, r"scheme=lsq needs bits >= 2"),
    ({"weight": {"bits": 4, "percentile": 30}}, r"percentile=30"),
    ({"weight": {"bits": 4, "ema_decay": 1.0}}, r"ema_decay=1.0"),
    ({"weight": {"bitz": 4}}, r"quant\.weight: unknown field\(s\) bitz"),
    ({"embedding": {"bits": 4, "scheme": "kmeans", "kmeans_weighting": "act"}},
     r"quant\.embedding\.kmeans_weighting='act' applies to k-means Linear weights only"),
    ({"weight": {"bits": 4, "kmeans_weighting": "act"}}, r"quant\.weight\.kmeans_weighting='act' applies"),
    ({"weight": {"bits": 4, "scheme": "kmeans", "kmeans_weighting": "hessian"}},
     r"quant\.weight\.kmeans_weighting='hessian' is unknown"),
    ({"act": {"bits": 8, "scheme": "kmeans"}}, r"quant\.act\.scheme='kmeans' is not supported for activations"),
    ({"act": {"bits": 8, "granularity": "group", "group_size": 4}}, r"quant\.act\.granularity='group'"),
    ({"attention": {"bits": 8, "granularity": "channel"}}, r"quant\.attention\.granularity='channel'"),
    ({"quant_noise_p": 1.5}, r"quant_noise_p=1.5 must be a number in \[0, 1\]"),
    ({"quant_noise_block": 0}, r"quant_noise_block=0"),
    ({"skip": ["("]}, r"module regex '\(' is invalid"),
    ({"overrides": {"x": {"bits": 12}}}, r"quant\.overrides\['x'\]\.bits=12"),
    ({"overrides": {"x": {"colour": 1}}}, r"unknown field\(s\) colour"),
    ({"wieght": {"bits": 4}}, r"quant: unknown field\(s\) wieght"),
]


@pytest.mark.parametrize("d,msg", BAD)
def test_invalid_configs_raise_one_line(d, msg):
    with pytest.raises(SdqConfigError, match=msg) as e:
        QuantConfig.from_dict(d).validate()
    assert "\n" not in str(e.value)
