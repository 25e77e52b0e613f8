"""params.yaml as pydantic models: load, validate in full, report one clear error.

Every knob lives in params.yaml. Sections that DVC stages declare (data, model, train, prune,
imp_channel, tickets.<name>, bench, report) change results; `runtime` (device, threads,
processes) changes only where and how fast, so no stage declares it and moving a run to a GPU
reruns nothing.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from structlth.errors import ParamsError

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet", "imagefolder")
IMAGE_FOLDERS = ("tiny_imagenet", "imagenet", "imagefolder")  # trees of image files under data.root
ARCHS = (
    "resnet20",
    "resnet32",
    "resnet56",
    "wrn32_2",
    "vgg16",
    "mobilenet_v1",
    "resnet18",
    "resnet50",
)
REFILL_CRITERIA = ("magnitude", "remain", "l1", "l2", "saliency")
ROUND_ID = re.compile(r"round([0-9]+)")  # fullmatch: "round4\n" is not a round id
TICKET_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
RESERVED_NAMES = ("imp", "imp_channel", "data", "pretrain", "bench", "stats")  # folders of artifacts/ and reports/
SEED = Field(0, ge=0, lt=2**63, description="a seed (torch generators take < 2^63)")
FIXED_SIZES = {"fashion_mnist": (60_000, 10_000), "cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}  # train, test


class Strict(BaseModel):
    """No unknown keys, no lax coercion ("4" for an int, true for a number), no inf or nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Augment(Strict):
    crop_padding: int = Field(2, ge=0, le=32, description="random crop after padding with the mean")
    hflip: bool = True
    random_resized_crop: bool = Field(False, description="ImageNet's RandomResizedCrop (streamed ImageFolder data only)")

    @model_validator(mode="after")
    def _one_crop(self) -> Augment:
        if self.random_resized_crop and self.crop_padding:
            raise ValueError("random_resized_crop and crop_padding are two crops: set crop_padding: 0")
        return self


class DataParams(Strict):
    location: ClassVar[set[str]] = {"root", "download"}  # where the raw data is found: moving it changes no artifact
    dataset: Literal[DATASETS]  # type: ignore[valid-type]
    root: str = Field(description="where raw data lives or is unpacked")
    download: bool = Field(False, description="allow torchvision's checked download")
    val_size: int = Field(5000, ge=1, description="validation images carved from train")
    train_subset: int | None = Field(None, ge=1, description="train images kept (after val)")
    test_subset: int | None = Field(None, ge=1)
    split_seed: int = SEED
    image_size: int | None = Field(None, ge=8, description="ImageFolder datasets: resize side")
    loader: Literal["auto", "memory", "stream"] = Field(
        "auto", description="memory: decode once into tensors; stream: read files every epoch; auto: stream ImageFolder trees"
    )
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    augment: Augment = Augment()

    @property
    def streams(self) -> bool:
        """Whether training reads image files every epoch instead of prepared tensors."""
        return self.loader == "stream" or (self.loader == "auto" and self.dataset in IMAGE_FOLDERS)

    @model_validator(mode="after")
    def _loader_fits_the_dataset(self) -> DataParams:
        if self.loader == "stream" and self.dataset not in IMAGE_FOLDERS:
            raise ValueError(f"loader=stream reads image files: {self.dataset} has none; use auto or memory")
        if self.augment.random_resized_crop and not self.streams:
            raise ValueError("augment.random_resized_crop needs the original images: an ImageFolder dataset with loader auto or stream")
        return self

    @model_validator(mode="after")
    def _fits_the_dataset(self) -> DataParams:
        """Sizes a fixed-size dataset cannot hold (ImageFolder trees are checked when read)."""
        if self.dataset not in FIXED_SIZES:
            return self
        n_train, n_test = FIXED_SIZES[self.dataset]
        train = self.train_subset or n_train - self.val_size
        checks = [
            ("val_size", self.val_size, n_train - 1, f"{n_train} train images"),
            (
                "train_subset",
                self.train_subset or 0,
                n_train - self.val_size,
                f"{n_train - self.val_size} train images after data.val_size",
            ),
            ("test_subset", self.test_subset or 0, n_test, f"{n_test} test images"),
            ("batch_size", self.batch_size, train, f"{train} train images"),
        ]
        for key, value, limit, what in checks:
            if value > limit:
                raise ValueError(f"{key}={value} is larger than the dataset: {self.dataset} has {what}")
        return self


class ModelParams(Strict):
    arch: Literal[ARCHS]  # type: ignore[valid-type]
    width: float = Field(1.0, gt=0, le=16, description="channel width multiplier")
    small_input_stem: bool = Field(True, description="3x3 stride-1 stem for small images")

    @model_validator(mode="after")
    def _width_fits_arch(self) -> ModelParams:
        if self.arch in ("resnet18", "resnet50") and self.width != 1.0:
            raise ValueError(f"width must be 1.0 for {self.arch} (torchvision's model), got {self.width}")
        return self


class TrainParams(Strict):
    epochs: int = Field(ge=1)
    retrain: Literal["full", "rest"] = Field("full", description="rounds retrain the full schedule, or epochs rewind_epoch..epochs")
    lr: float = Field(gt=0)
    schedule: Literal["multistep", "cosine"] = "multistep"
    milestones: list[int] = Field(default_factory=list, description="multistep epochs")
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)
    decay_norm: bool = Field(False, description="weight decay on BN weights and biases too (the reference code decays every parameter)")
    rewind_epoch: int = Field(ge=0, description="snapshot taken after this many epochs")
    seed: int = SEED

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainParams:
        if self.rewind_epoch >= self.epochs:
            raise ValueError(f"rewind_epoch ({self.rewind_epoch}) must be smaller than epochs ({self.epochs})")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs")
        bad = [m for m in self.milestones if not 0 < m < self.epochs]
        if bad or any(a >= b for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing epochs inside (0, {self.epochs}); got {self.milestones}")
        return self


class Prunable(Strict):
    stem: bool = Field(False, description="prune the first conv too")
    classifier: bool = Field(False, description="prune the final linear layer too")


class RoundLink(Strict):
    prev: str


class PruneParams(Strict):
    rate: float = Field(gt=0, lt=1, description="fraction of surviving weights pruned per round")
    rounds: dict[str, RoundLink]
    ticket_rounds: list[str] = Field(min_length=1, description="IMP rounds that every ticket is made from")
    prunable: Prunable = Prunable()

    @field_validator("rounds")
    @classmethod
    def _rounds_form_a_chain(cls, rounds: dict[str, RoundLink]) -> dict[str, RoundLink]:
        chain_order(rounds)
        return rounds

    @model_validator(mode="after")
    def _ticket_rounds_exist(self) -> PruneParams:
        unknown = [r for r in self.ticket_rounds if r not in self.rounds]
        if unknown or len(set(self.ticket_rounds)) != len(self.ticket_rounds):
            raise ValueError(
                f"ticket_rounds must name distinct rounds of prune.rounds ({', '.join(chain_order(self.rounds))}); got {self.ticket_rounds}"
            )
        return self


def chain_order(rounds: dict[str, RoundLink]) -> list[str]:
    """Round ids in chain order from round0 (the dense net); raise unless one simple chain."""
    if not rounds:
        raise ValueError("at least one round is needed")
    for rid, link in rounds.items():
        if not ROUND_ID.fullmatch(rid) or rid == "round0":
            raise ValueError(f"round id {rid!r} must look like round1, round2, ...")
        if link.prev == rid:
            raise ValueError(f"{rid}.prev = {rid!r}: a round cannot follow itself")
        if link.prev != "round0" and link.prev not in rounds:
            raise ValueError(f"{rid}.prev = {link.prev!r} is neither round0 nor another round")
    successors: dict[str, str] = {}
    for rid, link in rounds.items():
        if link.prev in successors:
            raise ValueError(f"{successors[link.prev]} and {rid} both follow {link.prev}: rounds must form one chain")
        successors[link.prev] = rid
    order, cur = [], "round0"
    while cur in successors:
        cur = successors[cur]
        order.append(cur)
    if len(order) != len(rounds):
        lost = sorted(set(rounds) - set(order))
        raise ValueError(f"rounds {lost} are not reachable from round0 (a gap or a cycle)")
    return order


class ChannelPruneParams(Strict):
    rate: float = Field(0.2, gt=0, lt=1, description="fraction of alive channels per layer")


class TicketOrigin(Strict):
    """Where a refill or regroup ticket starts: the mask it post-processes and the weights it
    retrains from."""

    source: Literal["imp", "omp", "random", "snip", "synflow"] = Field(
        "imp",
        description=(
            "the unstructured mask post-processed: the IMP round's, or a one-shot one at its density (omp: magnitude of the"
            " trained dense net; random: uniform per layer; snip, synflow: at initialisation; structlth.pruning.sources)"
        ),
    )
    source_batches: int = Field(1, ge=1, description="snip: training batches its sensitivities are summed over")
    source_iterations: int = Field(100, ge=1, description="synflow: pruning rounds to the density")
    init: Literal["rewind", "original", "random"] = Field(
        "rewind",
        description=(
            "weights a ticket retrains from: the rewind point (the lottery ticket), the original initialisation,"
            " or a fresh random one of the same structure (the paper's 'Random' columns); the schedule is the same"
        ),
    )


STRUCTURES = ("unstructured", "channel", "group")  # what a ticket's masks are, and so how it runs fast


class RefillParams(TicketOrigin):
    align_field: ClassVar[str] = "channel_align"  # the key that rounds what the ticket keeps up
    kind: Literal["refill"]
    criterion: Literal[REFILL_CRITERIA] = "magnitude"  # type: ignore[valid-type]
    refill_rate: float = Field(0.0, ge=0, lt=1)
    count: Literal["floor", "ceil"] = Field(
        "ceil", description="K = ceil or floor of nnz/n + (C_out - nnz/n) * refill_rate (paper Table A3: ceil)"
    )
    score_batches: int = Field(1, ge=1, description="batches for activation criteria")
    channel_align: int = Field(1, ge=1, le=64, description="kept channels rounded up to a multiple (CPU kernels work in blocks of 8/16)")
    readers: Literal["drop", "keep"] = Field(
        "drop",
        description=(
            "drop: a dropped channel's BN and the next layers' weights that read it go (a smaller dense net);"
            " keep: they stay and train, so the channel emits relu(BN bias), as in the paper's code (not slimmable:"
            " the ticket runs as an unstructured one)"
        ),
    )

    @property
    def structure(self) -> str:
        """channel: whole output channels, a smaller dense net; with readers: keep, unstructured."""
        return "unstructured" if self.readers == "keep" else "channel"

    @property
    def dead_bn(self) -> bool:
        """Whether the BN of a channel with no weight is masked (its output is then exactly zero)."""
        return self.readers == "drop"


class RegroupParams(TicketOrigin):
    structure: ClassVar[str] = "group"  # dense blocks of rows x input units
    dead_bn: ClassVar[bool] = True  # a channel with no weight has its BN masked (RefillParams.dead_bn)
    align_field: ClassVar[str] = "input_align"
    kind: Literal["regroup"]
    granularity: Literal["column", "channel"] = "column"
    hypergraph: Literal["channel", "column"] = Field("channel", description="hyperedges per input channel (fast) or per column (the paper)")
    rows_per_part: int = Field(32, ge=1, description="parts = max(1, rows // rows_per_part)")
    imbalance: float = Field(0.1, gt=0, lt=1)
    min_rows: int = Field(16, ge=1)
    column_rule: Literal["density", "budget", "prefix"] = "density"
    t1: float = Field(1.5, gt=0, description="prefix rule threshold")
    t2: float = Field(0.5, gt=0, le=1, description="density rule: min share of rows")
    b2: int = Field(4, ge=1, description="density rule: min qualifying columns")
    input_align: int = Field(1, ge=1, le=64, description="channel granularity: each block's input channels rounded up to a multiple")
    max_pins: int | None = Field(
        50_000,
        ge=1000,
        description=(
            "the hypergraph partitioned is a seeded sample of its hyperedges with at most this many pins (null: all of it, the paper; slow)"
        ),
    )
    inputs: Literal["overlap", "disjoint"] = Field(
        "overlap",
        description=(
            "overlap: blocks choose their input channels (the paper);"
            " disjoint: blocks split the input channels (no gather; not in the paper)"
        ),
    )
    seed: int = SEED

    @model_validator(mode="after")
    def _disjoint_needs_channels(self) -> RegroupParams:
        if self.inputs == "disjoint" and self.granularity != "channel":
            raise ValueError("inputs: disjoint needs granularity: channel (a block owns whole input channels)")
        return self


class TorchPruningParams(Strict):
    """The field's structured baseline: Torch-Pruning (DepGraph, global channel importance)
    prunes the trained dense net to the FLOPs of another ticket of the same IMP round."""

    structure: ClassVar[str] = "channel"
    dead_bn: ClassVar[bool] = True
    kind: Literal["torch_pruning"]
    match: str = Field(description="a refill or regroup ticket of the tickets section: its FLOPs at each round are the target")
    importance: Literal["l1", "filter_l1", "bn_scale", "taylor"] = Field(
        "l1",
        description=(
            "l1: Torch-Pruning's group L1 (mean-normalised, ranked net-wide); filter_l1: each filter's own L1 norm, one ratio"
            " per layer (Li et al. 2017); bn_scale: |BN weight| ranked net-wide (network slimming's criterion); taylor:"
            " |weight x gradient|"
        ),
    )
    start: Literal["finetune", "rewind"] = Field(
        "finetune", description="finetune: the trained dense weights; rewind: the rewind point (as every ticket)"
    )
    sparsity_reg: float = Field(
        0.0,
        ge=0,
        description=(
            "network slimming's lambda: the baseline prunes its own dense net, trained from the same initialisation with an L1"
            " penalty lambda * sum |BN weight| (Liu et al. 2017); 0: the shared dense net"
        ),
    )
    finetune_lr: float | None = Field(
        0.01,
        gt=0,
        description="start: finetune: fine-tuning's learning rate, on train's schedule (Torch-Pruning's recipe: 0.01); null: train.lr",
    )
    round_to: int | None = Field(
        None,
        ge=1,
        le=64,
        description=(
            "kept channels per layer rounded to a multiple (Torch-Pruning's round_to); null: the matched ticket's channel_align"
            " (a regroup ticket's: 1), so both keep channels in the same multiples"
        ),
    )
    score_batches: int = Field(1, ge=1, description="train batches for the taylor importance's gradients")


TicketParams = Annotated[RefillParams | RegroupParams, Field(discriminator="kind")]


class GroupChainParams(Strict):
    """A group-aware IMP chain (the paper's Alg. 4): every round prunes by magnitude, then
    post-processes with a ticket's params before rewinding, so the next round prunes a
    structured net."""

    ticket: str = Field(
        description="a refill or regroup ticket of the tickets section (source: imp) whose post-processing each round applies"
    )


class ReplicateParams(Strict):
    seeds: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(
        default_factory=list,
        description="more training seeds: the whole chain again per seed (train.seed is the first, and the benched one)",
    )


CHOICE_REPEATS = 21  # pairs a choice times at most: at 7, ONNX Runtime builds of one ticket chose different engines more often


class BenchParams(Strict):
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field([1, 64], min_length=1)
    repeats: int = Field(20, ge=1)
    blocks: int = Field(
        4, ge=1, description="each row times repeats x blocks pairs; the spread of its blocks' savings is its 95% interval (ci95)"
    )
    warmup: int = Field(3, ge=0)
    threads: int = Field(2, ge=1)
    atol: float = Field(1e-3, gt=0, description="max |fast - masked| relative to output scale")
    choice_repeats: int = Field(
        CHOICE_REPEATS,
        ge=1,
        description="pairs each choice (alignment, engine, memory format) times at most; a settled choice stops sooner",
    )
    onnxruntime: bool = Field(True, description="also time dense and tickets exported to ONNX, in ONNX Runtime (the onnx extra)")
    compile: bool = Field(
        False, description="also time the production engines and dense compiled by torch.compile (inductor; tens of seconds each)"
    )


class ReportParams(Strict):
    tolerance: float = Field(
        0.01,
        ge=0,
        description="winning: non-inferior to dense at this margin (the 95% interval of the paired difference above -tolerance)",
    )
    mask_layer: str | None = Field(None, description="layer drawn in the mask pictures")
    smoke: bool = Field(False, description="a smoke run (configs/quick.yaml): the report says no claim in it is evidence")


class RuntimeParams(Strict):
    device: Literal["auto", "cpu", "cuda", "cuda:auto"] = Field(
        "auto",
        description=(
            "auto: CUDA when there is one; cuda:auto: a GPU no other stage on this node holds (experiments queued with"
            " dvc queue start -j N spread over N GPUs; structlth.devices)"
        ),
    )
    device_locks: str | None = Field(
        None, description="cuda:auto: the folder of per-GPU locks every process on the node shares (null: under the temp folder)"
    )
    threads: int = Field(2, ge=1)
    nproc_per_node: int = Field(1, ge=1, description="training stages re-run themselves under torchrun")
    progress: Literal["auto", "always", "never"] = "auto"
    loader_workers: int = Field(4, ge=0, le=64, description="processes reading streamed images (0: the training process)")
    decode: Literal["auto", "workers", "device"] = Field(
        "auto", description="streamed JPEGs: decoded by the workers or on the training device (auto: on CUDA)"
    )


class Params(Strict):
    data: DataParams
    model: ModelParams
    train: TrainParams
    prune: PruneParams
    imp_channel: ChannelPruneParams = ChannelPruneParams()
    tickets: dict[str, TicketParams]
    baselines: dict[str, TorchPruningParams] = Field(
        default_factory=dict, description="Torch-Pruning tickets at the FLOPs of a ticket, made at the same rounds"
    )
    group_chains: dict[str, GroupChainParams] = Field(
        default_factory=dict, description="group-aware IMP chains: name -> the ticket each round is post-processed as"
    )
    replicates: ReplicateParams = ReplicateParams()
    bench: BenchParams = BenchParams()
    report: ReportParams = ReportParams()
    runtime: RuntimeParams = RuntimeParams()

    @field_validator("tickets")
    @classmethod
    def _ticket_names(cls, tickets: dict[str, TicketParams]) -> dict[str, TicketParams]:
        for name in tickets:
            if not TICKET_NAME.fullmatch(name) or name in RESERVED_NAMES:
                raise ValueError(f"name {name[:80]!r} must be lower_snake, at most 64 characters, and none of {', '.join(RESERVED_NAMES)}")
        return tickets

    @model_validator(mode="after")
    def _replicate_seeds_are_new(self) -> Params:
        seeds = self.replicates.seeds
        if len(set(seeds)) != len(seeds) or self.train.seed in seeds:
            raise ValueError(f"replicates.seeds: {seeds} must be distinct seeds other than train.seed ({self.train.seed})")
        return self

    @property
    def seeds(self) -> list[int]:
        """Every training seed of the run: train.seed first, then replicates.seeds."""
        return [self.train.seed, *self.replicates.seeds]

    def with_seed(self, seed: int) -> Params:
        """These params with train.seed = seed (a replicate's params)."""
        return self.model_copy(update={"train": self.train.model_copy(update={"seed": seed})})

    @model_validator(mode="after")
    def _baselines_match_tickets(self) -> Params:
        for name, b in self.baselines.items():
            if not TICKET_NAME.fullmatch(name) or name in RESERVED_NAMES or name in self.tickets:
                raise ValueError(
                    f"baselines: name {name[:80]!r} must be lower_snake, at most 64 characters, no ticket's name,"
                    f" and none of {', '.join(RESERVED_NAMES)}"
                )
            if b.match not in self.tickets:
                raise ValueError(
                    f"baselines.{name}.match: {b.match!r} is not a ticket of the tickets section ({', '.join(self.tickets) or 'none'})"
                )
        return self

    @model_validator(mode="after")
    def _group_chains_name_tickets(self) -> Params:
        for name, g in self.group_chains.items():
            if not TICKET_NAME.fullmatch(name) or name in RESERVED_NAMES or name in self.tickets or name in self.baselines:
                raise ValueError(
                    f"group_chains: name {name[:80]!r} must be lower_snake, at most 64 characters, no ticket's or baseline's"
                    f" name, and none of {', '.join(RESERVED_NAMES)}"
                )
            spec = self.tickets.get(g.ticket)
            if spec is None or spec.source != "imp":
                raise ValueError(
                    f"group_chains.{name}.ticket: {g.ticket!r} is not a ticket of the tickets section made from IMP masks"
                    f" ({', '.join(t for t, s in self.tickets.items() if s.source == 'imp') or 'none'})"
                )
            if spec.init != "rewind":
                raise ValueError(
                    f"group_chains.{name}.ticket: {g.ticket!r} retrains from init: {spec.init}, but a group-aware chain"
                    " rewinds every round (Alg. 4); name a ticket with init: rewind"
                )
            if not spec.dead_bn:
                raise ValueError(
                    f"group_chains.{name}.ticket: {g.ticket!r} keeps the readers of dropped channels (readers: keep), but a"
                    " group-aware chain prunes the weights that can no longer train every round; name a ticket with readers: drop"
                )
        return self

    @model_validator(mode="after")
    def _bench_fits_the_test_set(self) -> Params:
        n_test = self.data.test_subset or FIXED_SIZES.get(self.data.dataset, (0, None))[1]
        if n_test is not None and max(self.bench.batch_sizes) > n_test:
            raise ValueError(f"bench.batch_sizes: {max(self.bench.batch_sizes)} is larger than the {n_test} test images the bench times on")
        return self

    @property
    def chains(self) -> list[str]:
        """The pruning chains (every round has artifacts): imp, imp_channel, the group-aware chains."""
        return ["imp", "imp_channel", *self.group_chains]

    @property
    def methods(self) -> list[str]:
        """Every method with artifacts: the pruning chains, the tickets, the baselines (params order)."""
        return [*self.chains, *self.tickets, *self.baselines]

    def ticket_spec(self, name: str) -> RefillParams | RegroupParams | TorchPruningParams:
        """The tickets or baselines entry called `name`, or the ticket a group-aware chain
        post-processes as (ParamsError naming them when none has it)."""
        spec = (
            self.tickets.get(name)
            or self.baselines.get(name)
            or (self.tickets[self.group_chains[name].ticket] if name in self.group_chains else None)
        )
        if spec is None:
            raise ParamsError(f"tickets.{name}: no such ticket or baseline (have {sorted([*self.tickets, *self.baselines])})")
        return spec

    def round_to(self, baseline: str) -> int:
        """The channel multiple baseline `baseline` keeps: its round_to, else its matched ticket's channel_align."""
        spec = self.baselines[baseline]
        return spec.round_to if spec.round_to is not None else getattr(self.tickets[spec.match], "channel_align", 1)

    def structure_of(self, method: str) -> str:
        """The structure of a method's masks (one of STRUCTURES): imp's are unstructured,
        imp_channel's channel-wise, a ticket's, baseline's or group-aware chain's its kind's."""
        if method in ("imp", "imp_channel"):
            return "unstructured" if method == "imp" else "channel"
        return self.ticket_spec(method).structure

    def dead_bn(self, method: str) -> bool:
        """Whether a method's tickets mask the BN of channels with no weight (every one's but a
        refill ticket's with readers: keep): how it was trained, and so how it must run."""
        return method in ("imp", "imp_channel") or self.ticket_spec(method).dead_bn

    def round_ids(self) -> list[str]:
        return chain_order(self.prune.rounds)

    def rounds_of(self, method: str) -> list[str]:
        """The rounds a method has artifacts for: every round of a chain, the
        prune.ticket_rounds (in chain order) of a ticket."""
        rounds = self.round_ids()
        return rounds if method in self.chains else [r for r in rounds if r in self.prune.ticket_rounds]


def _keys_at(parts: list[str]) -> list[str]:
    """The keys params.yaml allows beside the last of `parts` (a location in the file; for a
    ticket, the keys of either kind), or [] where the schema has no fixed keys."""
    cls: Any = Params
    i = 0
    while i < len(parts) - 1:
        field = cls.model_fields.get(parts[i]) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        if typing.get_origin(ann) is dict:  # a named entry (tickets.<name>): its value's model
            ann, i = typing.get_args(ann)[1], i + 1
            if typing.get_origin(ann) is Annotated:
                ann = typing.get_args(ann)[0]
        cls, i = ann, i + 1
    members = typing.get_args(cls) if typing.get_origin(cls) in (Union, types.UnionType) else (cls,)  # a ticket: either kind's keys
    return [k for m in members if isinstance(m, type) and issubclass(m, BaseModel) for k in m.model_fields]


RENAMED = {"regroup": {"channel_align": "input_align"}}  # a ticket kind's keys under their old names


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for e in err.errors():
        parts = [str(p) for p in e["loc"]]
        kind = None
        if parts[:1] == ["tickets"] and len(parts) > 3 and parts[2] in ("refill", "regroup"):
            kind = parts.pop(2)  # the union's tag, which pydantic inserts into the location
        loc = ".".join(parts)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = list({"refill": RefillParams, "regroup": RegroupParams}[kind].model_fields) if kind else _keys_at(parts)
            close = [RENAMED[kind][parts[-1]]] if parts[-1] in RENAMED.get(kind, {}) else []
            close = close or (difflib.get_close_matches(parts[-1], allowed, n=1, cutoff=0.6) if parts else [])
            msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
        elif e["type"] == "union_tag_invalid":
            msg = f"kind must be one of {e['ctx']['expected_tags']}"
        if "input" in e and e["type"] not in ("missing", "extra_forbidden") and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")  # checks across sections name their keys
    return "\n".join(lines)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(format_validation_error(err, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key twice in one mapping (where PyYAML keeps the last,
    and DVC rejects the file)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(text: str) -> Any:
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_file(path: Path) -> Any:
    try:
        return _read_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder, not a params file") from None
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None


def merge(base: dict, over: dict) -> dict:
    """base with over's keys laid on it: mappings merge key by key, any other value replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def compose(path: str | Path, _seen: tuple[Path, ...] = ()) -> Any:
    """The params a file describes, as raw YAML data. A variant names the file it varies with
    `base:` (relative to its own folder) and holds only what differs: its mappings merge into the
    base's key by key, other values replace, and `drop:` lists dotted keys of the base to remove
    first (e.g. prune.rounds.round8). Bases may have bases; a cycle is an error."""
    path = Path(path)
    raw = _read_file(path)
    if not isinstance(raw, dict) or "base" not in raw:
        return raw
    over = dict(raw)
    base, drop = over.pop("base"), over.pop("drop", [])
    if not isinstance(base, str) or not isinstance(drop, list) or not all(isinstance(k, str) for k in drop):
        raise ParamsError(f"{path}: base must be a params file's path and drop a list of dotted keys")
    base_path = (path.parent / base).resolve()
    if base_path in (*_seen, path.resolve()):
        raise ParamsError(f"{path}: base {base!r} leads back to {path} (a cycle)")
    composed = copy.deepcopy(compose(base_path, (*_seen, path.resolve())))
    if not isinstance(composed, dict):
        raise ParamsError(f"{base_path}: expected a mapping of sections, got {type(composed).__name__}")
    for key in drop:
        *parents, last = key.split(".")
        node = composed
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise ParamsError(f"{path}: drop: {key!r} is not a key of its base {base}")
        del node[last]
    return merge(composed, over)


def load_params(path: str | Path = "params.yaml") -> Params:
    """The validated params of a params file, or of a variant composed on its base (`compose`)."""
    return parse_params(compose(path), str(path))


def params_hash(*sections: BaseModel) -> str:
    """Short content hash of the given sections: the identity of what they produce (a section's
    `location` fields, where its inputs are found, are no part of it)."""
    blob = json.dumps([s.model_dump(mode="json", exclude=getattr(s, "location", None)) for s in sections], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
