"""Parameter counts from the config (models/param_counts.py) against the built student and teacher,
and a fresh process that counts them without importing the model stack."""

import subprocess
import sys

import pytest
from conftest import REPO

from tipslab.jobs.bench.flops import trainable_params
from tipslab.models.checkpoint import tips_config
from tipslab.models.param_counts import param_counts
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent
from tipslab.orchestrator.config import load_experiment, to_dict

TINY = REPO / "ablations" / "base" / "tips_tiny.yaml"
VARIANTS = {
    "tiny TIPS": [],
    "no MIM (mask token frozen)": ["loss.mim_weight=0"],
    "web captions only, no teacher": ["loss.caption_mode=web", "loss.distill_weight=0", "loss.mim_weight=0"],
    "no contrastive term (text tower frozen)": ["loss.clip_weight=0"],
    "SwiGLU, wider": ["model.size=small-cpu", "model.mlp=swiglu"],
    "one shared head, its gain learnt": ["model.shared_heads=true", "model.head_norm_last_layer=false"],
    "tag head": ["loss.tag_weight=1", "model.num_tags=7"],
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_counts_equal_the_built_model(overrides):
    config = to_dict(load_experiment(TINY, overrides))
    student = TIPSStudent(tips_config(config))
    teacher = EMATeacher(student) if student.distill_head or student.mim_head else None
    counts = param_counts(config)
    assert counts.student == sum(p.numel() for p in student.parameters())
    assert counts.trainable == sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert counts.teacher == (sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0)
    assert trainable_params(config) == (counts.trainable, counts.teacher)  # the FLOP count's optimizer term


def test_counting_imports_no_model_stack():
    # The sweep's disk check counts before launch, in the driver: timm (with torchvision and
    # torch._dynamo) would add 1-2 s to every sweep's start.
    code = (
        "import sys; from tipslab.orchestrator.config import load_experiment, to_dict; "
        "from tipslab.models.param_counts import param_counts; "
        f"print(param_counts(to_dict(load_experiment({str(TINY)!r}, []))).student > 0, "
        "[m for m in ('timm', 'torchvision', 'torch._dynamo', 'tipslab.models.tips') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "[]"]
