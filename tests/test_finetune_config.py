"""``FinetuneConfig`` checks every numeric field on construction (a ValueError naming the field
and the value), and ``--aux-lm-weight`` refuses NaN / infinity as ``--cvt-weight`` does."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from unimask.finetune import FinetuneConfig
from unimask.finetune_cli import _aux_weight

BAD = [
    # (field, value, what the message says the field must be)
    ("aux_lm_weight", float("nan"), "a finite number >= 0"),
    ("aux_lm_weight", float("inf"), "a finite number >= 0"),
    ("aux_lm_weight", "nan", "a finite number >= 0"),
    ("aux_lm_weight", "-inf", "a finite number >= 0"),
    ("aux_lm_weight", -0.5, "a finite number >= 0"),
    ("aux_lm_weight", True, "a finite number >= 0"),
    ("aux_lm_weight", "lots", "'siatl' or a finite number >= 0"),
    ("cvt_weight", float("nan"), "a finite number > 0"),
    ("grad_clip", -1.0, "a finite number >= 0"),
    ("grad_clip", float("nan"), "a finite number >= 0"),
    ("weight_decay", float("nan"), "a finite number >= 0"),
    ("weight_decay", -0.01, "a finite number >= 0"),
    ("warmup_frac", 2.0, "a finite number in [0, 1]"),
    ("warmup_frac", -1.0, "a finite number in [0, 1]"),
    ("cut_frac", 0.0, "a finite number in (0, 1)"),
    ("cut_frac", 1.0, "a finite number in (0, 1)"),
    ("stlr_ratio", 0.5, "a finite number >= 1"),
    ("lr", float("nan"), "a finite number > 0"),
    ("lr", 0.0, "a finite number > 0"),
    ("lr", -1e-3, "a finite number > 0"),
    ("lm_lr", float("inf"), "a finite number > 0"),
    ("lr_decay", 0.0, "a finite number > 0"),
    ("mlm_probability", 0.0, "a finite number in (0, 1]"),
    ("mlm_probability", 1.5, "a finite number in (0, 1]"),
    ("epochs", 1.5, "an int >= 1"),
    ("epochs", 0, "an int >= 1"),
    ("epochs", True, "an int >= 1"),
    ("batch_size", 2.5, "an int >= 1"),
    ("batch_size", "8", "an int >= 1"),
    ("max_length", 0, "an int >= 1"),
    ("lm_finetune_steps", 1.5, "an int >= 0"),
    ("lm_finetune_steps", -1, "an int >= 0"),
    ("seed", -1, "an int in [0, 4294967296)"),
    ("log_every", -1, "an int >= 0"),
    ("cvt_eval_max", 2.0, "an int >= 0"),
    ("grad_accum", 1.0, "an int >= 1"),
]


@pytest.mark.parametrize(("field", "value", "must"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_bad_numbers_are_a_value_error_naming_field_and_value(field, value, must):
    with pytest.raises(ValueError) as e:
        FinetuneConfig(**{field: value})
    msg = str(e.value)
    assert msg.startswith(f"{field} must be"), msg
    assert must in msg, msg
    assert repr(value) in msg, msg


@pytest.mark.parametrize("flag", ["discriminative_lr", "gradual_unfreeze", "pack"])
def test_flags_must_be_bools(flag):
    with pytest.raises(ValueError, match=f"{flag} must be True or False, got 'yes'"):
        FinetuneConfig(**{flag: "yes"})


def test_good_values_are_kept_and_normalised():
    cfg = FinetuneConfig(epochs=np.int64(2), batch_size=4, lr=1, weight_decay=0, grad_clip=0, warmup_frac=1,
                         aux_lm_weight="0.25", seed=np.int32(7), mlm_probability=1)
    assert (cfg.epochs, type(cfg.epochs)) == (2, int)
    assert (cfg.seed, type(cfg.seed)) == (7, int)
    assert (cfg.lr, type(cfg.lr)) == (1.0, float)
    assert cfg.aux_lm_weight == 0.25 and cfg.grad_clip == 0.0 and cfg.warmup_frac == 1.0
    assert FinetuneConfig(aux_lm_weight="siatl").aux_lm_weight == "siatl"
    assert FinetuneConfig(aux_lm_weight=None).aux_lm_weight is None
    assert FinetuneConfig(grad_clip=None).grad_clip is None  # no clipping, as 0
    assert FinetuneConfig() == FinetuneConfig()  # the defaults pass their own checks


def test_cli_aux_lm_weight_refuses_nan_and_infinity():
    assert _aux_weight("siatl") == "siatl"
    assert _aux_weight("0.5") == 0.5 and _aux_weight("0") == 0.0
    for bad in ("nan", "inf", "-1", "heavy"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"--aux-lm-weight must be 'siatl' or a finite number "
                                                             f">= 0, got '{bad}'"):
            _aux_weight(bad)
    assert not math.isnan(_aux_weight("1e-3"))
