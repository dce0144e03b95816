"""The analytic FLOP count (jobs/bench/flops.py) against torch's FlopCounterMode on the real step."""

import pytest
import torch
from conftest import REPO
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tipslab.jobs.bench.flops import flops_per_image, step_flops
from tipslab.jobs.bench.step import bench_parts, synthetic_batch
from tipslab.orchestrator.config import load_experiment, to_dict

TINY = REPO / "ablations" / "base" / "tips_tiny.yaml"
B14 = REPO / "ablations" / "base" / "tips_b14.yaml"
aten = torch.ops.aten


# torch's counter has no formula for the CPU flash-attention kernels (it knows the CUDA ones): give
# them torch's own SDPA formulas, whose backward counts the recomputed scores (5 matmuls, not 4).
def cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(q, k, v)


def cpu_sdpa_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out, q, k, v)


CPU_SDPA = {
    aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_sdpa_backward,
}

VARIANTS = {
    "tiny TIPS": [],
    "no MIM (one student pass of the global crop)": ["loss.mim_weight=0"],
    "web captions only, no teacher": ["loss.caption_mode=web", "loss.distill_weight=0", "loss.mim_weight=0"],
    "contrastive loss on the masked view": ["loss.clip_view=masked"],
    "SwiGLU, wider, more crops": ["model.size=small-cpu", "model.mlp=swiglu", "data.local_crops=3"],
    "one shared head, its gain learnt": ["model.shared_heads=true", "model.head_norm_last_layer=false"],
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_flop_count_equals_the_flop_counter_on_the_real_step(overrides, one_torch_thread):
    exp = to_dict(load_experiment(TINY, overrides))
    parts = bench_parts(exp)
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        parts.step(synthetic_batch(exp, 3), 0, 0)
    counted = counter.get_total_flops()
    ours = step_flops(exp, batch_size=3)
    matmuls = sum(p.total for p in ours if p.name != "optimizer + EMA")  # the counter counts matmuls only
    recompute = sum(p.attention for p in ours if p.backward)  # flash backward recomputes Q·Kᵀ
    assert counted == pytest.approx(matmuls + recompute / 2, rel=1e-3)
    assert recompute / 2 < 0.05 * counted  # the only convention between the two counts is a small one


def test_b14_is_near_the_issue_estimate_and_its_views_dominate():
    exp = to_dict(load_experiment(B14))
    per_image = flops_per_image(exp)
    assert per_image == pytest.approx(615e9, rel=0.03)  # the issue's estimate; ours: 626 GFLOP
    parts = {p.name: p.total / exp["data"]["batch_size"] for p in step_flops(exp)}
    # The two student passes of the global crop and the 8 local crops are four fifths of the step.
    assert 0.75 < (parts["student global crop"] + parts["student local crops"]) / per_image < 0.85
    masked_only = flops_per_image(to_dict(load_experiment(B14, ["loss.clip_view=masked"])))
    assert per_image - masked_only == pytest.approx(parts["student global crop"] / 2, rel=1e-6)


def test_per_image_figure_is_nearly_independent_of_the_batch():
    exp = to_dict(load_experiment(B14))
    small, large = flops_per_image(exp, batch_size=8), flops_per_image(exp, batch_size=512)
    assert small > large  # the optimizer's cost is spread over fewer images
    assert small == pytest.approx(large, rel=0.01)
