"""FSDP2 on 2 CPU processes over gloo (torch.multiprocessing, no Ray): the sharded student and
teacher train exactly like unsharded DDP replicas, and a sharded checkpoint restores them."""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from tipslab.jobs.train.parallel import full_model_state_dict, load_sharded, save_sharded, shard_model
from tipslab.jobs.train.step import StepParts, param_groups, tips_step
from tipslab.models.config import LossConfig, ModelConfig, TIPSConfig
from tipslab.models.objective import TIPSObjective
from tipslab.models.teacher import EMATeacher
from tipslab.models.tips import TIPSStudent

WORLD = 2


def config() -> TIPSConfig:
    model = ModelConfig(
        size="tiny",
        image_size=28,
        head_hidden=32,
        head_bottleneck=16,
        head_prototypes=64,
        vocab_size=128,
        max_text_len=8,
    )
    return TIPSConfig(model=model, loss=LossConfig(distill_weight=1.0, mim_weight=2.0))


def rank_batch(rank: int, step: int) -> dict:
    g = torch.Generator().manual_seed(100 * rank + step)
    masks = torch.zeros(3, 4, dtype=torch.bool)
    masks[:, :3] = True
    return {
        "global_crop": torch.rand(3, 3, 28, 28, generator=g),
        "local_crops": torch.rand(3, 2, 3, 14, 14, generator=g),
        "masks": masks,
        "web_tokens": torch.randint(1, 128, (3, 8), generator=g),
        "synthetic_tokens": torch.randint(1, 128, (3, 8), generator=g),
    }


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def setup(seed: int):
    cfg = config()
    torch.manual_seed(seed)
    student = TIPSStudent(cfg)
    teacher = EMATeacher(student)
    return student, teacher, TIPSObjective(cfg)


def step(model, student, teacher, objective, optimizer, rank, i):
    parts = StepParts(student, objective, teacher, optimizer, sched=None, grad_clip=1.0, model=model)
    values = tips_step(parts, rank_batch(rank, i), teacher_temp=0.04, momentum=0.9, step=i)
    return {k: float(full(v)) for k, v in values.items()}  # the gradient norm of sharded parameters is a DTensor


def assert_same_params(a: torch.nn.Module, b: torch.nn.Module, **tol):
    """Same names, same values; a sharded module's parameters are compared whole."""
    params_a, params_b = dict(a.named_parameters()), dict(b.named_parameters())
    assert list(params_a) == list(params_b)
    for name, p in params_a.items():
        torch.testing.assert_close(full(p.detach()), full(params_b[name].detach()), msg=name, **tol)


def assert_same_state(sharded: torch.nn.Module, plain: torch.nn.Module, **tol):
    """The sharded module's whole state, in the unsharded layout, equals the plain module's."""
    whole, reference = full_model_state_dict(sharded), plain.state_dict()
    assert sorted(whole) == sorted(reference)
    for name, value in reference.items():
        assert whole[name].shape == value.shape, name
        torch.testing.assert_close(whole[name], value, msg=name, **tol)


def train_and_checkpoint(rank: int, store: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        reference, ref_teacher, ref_objective = setup(0)
        student, teacher, objective = copy.deepcopy(reference), copy.deepcopy(ref_teacher), TIPSObjective(config())
        ddp = DistributedDataParallel(reference)
        shard_model(student)
        shard_model(teacher)
        assert isinstance(student.vision.blocks[0].attn.qkv.weight, DTensor)
        ref_opt = torch.optim.AdamW(param_groups(reference, 0.05), lr=1e-3)
        opt = torch.optim.AdamW(param_groups(student, 0.05), lr=1e-3)
        for i in range(2):
            ref_terms = step(ddp, reference, ref_teacher, ref_objective, ref_opt, rank, i)
            terms = step(student, student, teacher, objective, opt, rank, i)
            assert terms.keys() == ref_terms.keys()
            for name in ref_terms:
                assert terms[name] == pytest.approx(ref_terms[name], rel=1e-4, abs=1e-5), name
        assert_same_state(student, reference, atol=1e-5, rtol=1e-4)
        assert_same_state(teacher, ref_teacher, atol=1e-5, rtol=1e-4)
        assert "mim" in terms and "distill" in terms

        save_sharded({"student": student, "teacher": teacher, "optimizer": opt, "step": 2}, folder)
        fresh, fresh_teacher, fresh_objective = setup(1)  # other weights, to be overwritten
        shard_model(fresh)
        shard_model(fresh_teacher)
        fresh_opt = torch.optim.AdamW(param_groups(fresh, 0.05), lr=1e-3)
        state = {"student": fresh, "teacher": fresh_teacher, "optimizer": fresh_opt, "step": 0}
        load_sharded(state, folder)
        assert state["step"] == 2
        assert_same_params(fresh, student, atol=0, rtol=0)
        assert_same_params(fresh_teacher, teacher, atol=0, rtol=0)
        for p, q in zip(student.parameters(), fresh.parameters()):
            if not p.requires_grad:  # the prototypes' fixed gains (model.head_norm_last_layer): no state
                continue
            for key in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(full(opt.state[p][key]), full(fresh_opt.state[q][key]), atol=0, rtol=0)
        # The objective's teacher centres are not in this state, so continue both with the same objective.
        same_objective = copy.deepcopy(objective)
        after = step(fresh, fresh, fresh_teacher, objective, fresh_opt, rank, 5)
        original = step(student, student, teacher, same_objective, opt, rank, 5)
        assert after == original
    finally:
        dist.destroy_process_group()


def test_fsdp2_matches_ddp_and_its_checkpoint_restores_the_state(tmp_path):
    mp.spawn(train_and_checkpoint, args=(str(tmp_path / "store"), str(tmp_path / "checkpoint")), nprocs=WORLD)


def test_a_sharded_checkpoint_is_read_as_data_only(tmp_path):
    """read_sharded round-trips what save_sharded wrote (one process, no process group), and a
    `.metadata` crafted to run code when unpickled is refused without running it."""
    import builtins
    import pickle

    from tipslab.jobs.train.parallel import read_sharded
    from tipslab.models.errors import DataError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    folder = tmp_path / "sharded"
    save_sharded({"student": model, "optimizer": optimizer}, str(folder))
    whole = read_sharded(str(folder))
    for name, value in model.state_dict().items():
        assert torch.equal(whole["student"][name], value), name

    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return builtins.exec, (f"open({str(marker)!r}, 'w').close()",)

    (folder / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError, match=r"\.metadata: refused: not the metadata of a sharded checkpoint"):
        read_sharded(str(folder))
    assert not marker.exists()
    pickle.loads((folder / ".metadata").read_bytes())  # the payload is live: plain unpickling runs it
    assert marker.exists()
