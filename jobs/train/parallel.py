"""FSDP2 for the TIPS student and its EMA teacher, and their sharded checkpoints.

`shard_model` wraps every transformer block (of the image and text towers) in its own FSDP unit,
then the root (embeddings, heads, the tagging head's small layers), so that only one block's full
weights exist at a time in forward and backward: what lets the L and g sizes fit. The teacher is
wrapped by the same call: FSDP2 shards each parameter on its first dimension over the same mesh, so
a teacher parameter's local shard holds exactly the rows of its student parameter's local shard,
and the EMA update (two foreach calls over the local shards, models/teacher.py) needs no
communication.

Checkpoints go through torch.distributed.checkpoint: every rank writes its own shards and a restart
may use another world size. The state_dict helpers of torch.distributed.checkpoint key the
optimizer's state by parameter names, not by the order of its parameter list.
`train.strategy: fsdp` uses all of this in the training loop (jobs/train/loop.py); `read_sharded` reads
such a checkpoint back whole in one process, without a process group.

Outside forward and backward a sharded module's parameters are DTensors, each rank holding its rows:
`param_norm`, `full_parameter` and `full_model_state_dict` read them whole (collectives).
"""

import io
import pickle

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from timm.models.vision_transformer import Block
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.utils import parametrize

from tipslab.models.checkpoint import numpy_scalars
from tipslab.models.errors import DataError


class ScalarAsVector(nn.Module):
    """A parametrization that stores a scalar parameter as a 1-element vector, which FSDP2 can shard
    (it refuses 0-dim parameters, such as the text tower's `log_temperature`); the module still
    sees a scalar."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(())

    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1)


def shard_model(module: nn.Module, mesh=None) -> nn.Module:
    """Shard `module` in place with FSDP2: each transformer block, then the root. `mesh`: a 1-D
    DeviceMesh over the ranks (None: every rank of the default process group). Returns the module,
    whose parameters are now DTensors; a scalar parameter `x.name` becomes
    `x.parametrizations.name.original` of shape [1] (`full_model_state_dict` maps it back)."""
    for name, p in list(module.named_parameters()):
        if p.ndim == 0:
            owner, _, attr = name.rpartition(".")
            parametrize.register_parametrization(module.get_submodule(owner), attr, ScalarAsVector(), unsafe=True)
    for block in [m for m in module.modules() if isinstance(m, Block)]:
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    if not any(p.requires_grad for p in module.parameters()):
        # FSDP2 keeps the root's parameters gathered after forward, expecting a backward; a frozen
        # module (the EMA teacher) has none, and its EMA update needs the shards back.
        module.register_forward_hook(lambda m, args, output: m.reshard())
    return module


def _owner(optimizer: torch.optim.Optimizer, modules: dict[str, nn.Module]) -> nn.Module:
    """The module whose parameters the optimizer updates."""
    first = next(p for group in optimizer.param_groups for p in group["params"])
    for module in modules.values():
        if any(p is first for p in module.parameters()):
            return module
    raise ValueError("save_sharded/load_sharded: an optimizer's parameters belong to no module in the state")


def _state_dict(state: dict) -> dict:
    modules = {k: v for k, v in state.items() if isinstance(v, nn.Module)}
    out = {}
    for name, value in state.items():
        if isinstance(value, nn.Module):
            out[name] = get_model_state_dict(value)
        elif isinstance(value, torch.optim.Optimizer):
            out[name] = get_optimizer_state_dict(_owner(value, modules), value)
        else:
            out[name] = value
    return out


def save_sharded(state: dict, path: str) -> None:
    """Write `state` to the folder `path`, every rank its own shards (a collective: call on all ranks).

    state: names -> sharded (or plain) modules, their optimizers, and plain values (step, stage,
    tensors, dicts of them). An optimizer is matched to the module in `state` that holds its
    parameters.
    """
    dcp.save(_state_dict(state), checkpoint_id=path)


def load_sharded(state: dict, path: str) -> None:
    """Read what `save_sharded` wrote into `state`, in place: the modules' parameters and buffers,
    the optimizers' states, and the plain values (replaced in the dict). A collective."""
    loaded = _state_dict(state)
    reader = DataOnlyReader(path)
    reader.read_metadata()  # a refusal is one DataError here, not one of torch's wrapped per-rank reports
    dcp.load(loaded, storage_reader=reader, planner=DataOnlyPlanner())
    modules = {k: v for k, v in state.items() if isinstance(v, nn.Module)}
    for name, value in state.items():
        if isinstance(value, nn.Module):
            set_model_state_dict(value, loaded[name], options=StateDictOptions(strict=True))
        elif isinstance(value, torch.optim.Optimizer):
            set_optimizer_state_dict(_owner(value, modules), value, loaded[name])
        else:
            state[name] = loaded[name]


def full_model_state_dict(module: nn.Module, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The whole, unsharded state dict of a module sharded by `shard_model`, on CPU, with the keys
    and shapes of the unsharded model (for the ordinary checkpoint of models/checkpoint.py). A
    collective; every rank gets it, or with `rank0_only` rank 0 only (the others get {}), each
    parameter moved to CPU as soon as it is gathered: what a checkpoint writer wants."""
    # cpu_offload leaves every rank but 0 with an empty dict; without it, move to CPU here.
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=rank0_only))
    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        owner, marker, attr = key.partition(".parametrizations.")
        if marker and attr.endswith(".original") and value.numel() == 1 and "." not in attr[: -len(".original")]:
            out[f"{owner}.{attr[: -len('.original')]}"] = value.reshape(())
        else:
            out[key] = value
    return out


def full_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state), gathered whole on every rank, keyed as `save_sharded` keys
    them (parameter names, parametrized scalars as `...parametrizations.x.original`): what
    `read_sharded` returns for that module and optimizer. A collective that gathers the optimizer
    too: for checks (the resume trace), never for checkpoints."""
    whole = StateDictOptions(full_state_dict=True)
    return get_model_state_dict(module, options=whole), get_optimizer_state_dict(module, optimizer, options=whole)


def read_sharded(path: str) -> dict:
    """Everything a `save_sharded` call wrote to `path`, whole (no DTensors), in this one process
    (no process group needed): {name: model state dict, optimizer state dict or value}. For tests,
    checks and conversions; it holds the whole optimizer state in memory."""
    state: dict = {}
    reader = DataOnlyReader(path)
    reader.read_metadata()  # a refusal is one DataError here, not one of torch's wrapped per-rank reports
    _load_state_dict(state, storage_reader=reader, planner=DataOnlyEmptyPlanner(), no_dist=True)
    return state


def unsharded(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value as a plain tensor (a collective unless it is replicated); any other
    tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def full_parameter(module: nn.Module, name: str) -> torch.Tensor:
    """The whole value of the parameter the unsharded model calls `name` ("text.log_temperature"),
    in a module sharded by `shard_model` or not, detached. A collective when sharded: call on every
    rank."""
    owner, _, attr = name.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    if parametrize.is_parametrized(sub, attr):
        chain = getattr(sub.parametrizations, attr)
        value = unsharded(chain.original)
        for transform in chain:
            value = transform(value)
        return value.detach()
    return unsharded(getattr(sub, attr)).detach()


def param_norm(parameters) -> torch.Tensor:
    """The L2 norm of all `parameters` together, a 0-dim tensor. Sharded parameters (DTensors
    sharded by `shard_model`, each rank holding different rows) count each row once: their local
    squares are summed over the ranks (a collective; plain parameters are assumed the same on
    every rank and counted once)."""
    plain, local = [], []
    for p in parameters:
        p = p.detach()
        if isinstance(p, DTensor):
            if any(not placement.is_shard() for placement in p.placements):
                raise ValueError("param_norm: only sharded or plain parameters, not replicated DTensors")
            local.append(p.to_local().float().pow(2).sum())
        else:
            plain.append(p.float().pow(2).sum())
    total = torch.stack(plain).sum() if plain else torch.zeros(())
    if local:
        sharded = torch.stack(local).sum()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sharded)
        total = total.to(sharded.device) + sharded
    return total.sqrt()


# --------------------------------------------------------------------------- sharded checkpoints as data only
# torch.distributed.checkpoint unpickles a checkpoint's `.metadata` with plain pickle, and its
# non-tensor values with torch.load(weights_only=False): a crafted `sharded/` folder could run code
# on resume. These read the metadata through an allow-list of the classes it is made of (the
# checkpoint format's own) and every value as data only, like models/checkpoint.py's `model.pt`.
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": None,  # any of the format's own classes
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "Path"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        allowed = _METADATA_CLASSES.get(module, ())
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if allowed is None or name in allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


class DataOnlyReader(FileSystemReader):
    """A FileSystemReader whose metadata may build only the checkpoint format's own classes."""

    def read_metadata(self, *args, **kwargs):
        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with self.fs.create_stream(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except pickle.UnpicklingError as err:
            raise DataError(f"{path}: refused: not the metadata of a sharded checkpoint ({err})") from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _data_only(value: io.BytesIO, where):
    try:
        with torch.serialization.safe_globals(numpy_scalars()):
            return torch.load(value, weights_only=True)
    except pickle.UnpicklingError as err:
        raise DataError(f"a sharded checkpoint's value {where}: refused: not plain data ({err})") from None


class DataOnlyPlanner(DefaultLoadPlanner):
    """The default load planner, reading every non-tensor value as data only."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        loaded = _data_only(value, fqn)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], loaded)
        else:
            self.state_dict[fqn] = loaded


class DataOnlyEmptyPlanner(_EmptyStateDictLoadPlanner, DataOnlyPlanner):
    """Rebuilds the whole state dict from the metadata (what `read_sharded` needs), data only."""
