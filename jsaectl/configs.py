"""The configuration of every stage: one frozen dataclass each, the only place an option is
declared (see options.py: its CLI name, alias, default and help all come from here).

This module imports nothing heavy, so that the command line can be built (``jsaectl --help``,
``--version``) without torch, zarr or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from jsaectl.errors import ConfigError, shown
from jsaectl.options import at_most, check_types, fractions, option, positive, thresholds
from jsaectl.tracking import INSTALL_HINT, split_tags

BUNDLED_MODEL = "jsaectl-demo"  # the tiny English/German GPT-NeoX model shipped in assets/model
BUNDLED_DEFAULT_LAYER = 2  # the middle of its 4 layers
BUNDLED_CORPUS = "jsaectl-sample"  # the default --dataset: assets/corpus/sample.jsonl
BUNDLED_HELDOUT = "jsaectl-heldout"  # held-out documents of the same sources: assets/corpus/heldout.jsonl

# The choices of choice options: --help lists them, check_types refuses anything else.
StoreDtype = Literal["float16", "float32", "bfloat16"]
Compression = Literal["none", "zstd"]
InitScheme = Literal["tl", "hf"]  # see "How --random-init draws the weights" in models.py
JacobianAt = Literal["x", "reconstruction"]  # see jsae.py
Side = Literal["in", "out"]
ConnectionSort = Literal["strength", "mean", "count"]
RankBy = Literal["jacobian", "product"]
WeightFormat = Literal["saelens", "sparsify", "jsae-pair"]
ConnectionFormat = Literal["connections-csv", "connections-jsonl"]
Format = Literal[WeightFormat, ConnectionFormat]
JACOBIAN_AT: tuple[str, ...] = get_args(JacobianAt)
WEIGHT_FORMATS: tuple[str, ...] = get_args(WeightFormat)
CONNECTION_FORMATS: tuple[str, ...] = get_args(ConnectionFormat)
FORMATS = WEIGHT_FORMATS + CONNECTION_FORMATS

THRESHOLDS = (0.005, 0.01, 0.015, 0.02, 0.04)  # the paper's |J| thresholds
NORMALISED_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)  # multiples of a token's rms |J| (sparsity.py)
DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."
# Bounds of counts that size memory or time (options.at_most): far beyond any sensible value.
MAX_EXAMPLES = 10_000  # kept per latent or connection: a table of latents × examples
MAX_BATCH_TOKENS = 1 << 22  # tokens in one batch of an analysis
MAX_PASSES = 1_000  # training passes over an activations store
WANDB_INSTALL = INSTALL_HINT.replace("[", "\\[")  # \\[: rich would read [wandb] as markup in --help


def _check_wandb(cfg: Any, tags: tuple[str, ...] = ()) -> None:
    """--wandb PROJECT and --wandb-tags as W&B accepts them, refused here rather than failing
    in W&B once the work has started."""
    project = cfg.wandb
    if project is not None and (not project.strip() or len(project) > 128 or any(c in project for c in "/\\#?%:")):
        raise ConfigError(f"--wandb: {shown(project)} is not a W&B project name",
                          hint="1 to 128 characters, none of / \\ # ? % :")
    for tag in split_tags(tags):
        if len(tag) > 64:
            raise ConfigError(f"--wandb-tags: {shown(tag)} is longer than W&B's 64 characters a tag")


def check_latent_ids(ids: tuple[int, ...], n_latents: int) -> None:
    """Refuse latent ids the SAEs do not have (known once a store is open)."""
    bad = [i for i in ids if not 0 <= i < n_latents]
    if bad:
        raise ConfigError(f"latent id {bad[0]} is out of range: the SAEs have {n_latents} latents (0–{n_latents - 1})")


# ---------------------------------------------------------------------------------------------
# harvest


@dataclass(frozen=True)
class HarvestConfig:
    OUTPUTS = ("json",)  # see options.OUTPUTS

    model: str = option(BUNDLED_MODEL, argument=True, help=(
        "Hugging Face Hub id (gpt2, EleutherAI/pythia-70m-deduped, ...), a local save_pretrained() "
        "directory, or jsaectl-demo, the bundled English/German model (no network needed)."))
    layer: int | None = option(None, short="-l", help=(
        "Layer whose MLP is harvested (0-based). Default: 2 for jsaectl-demo; required otherwise."))
    dataset: str = option(BUNDLED_CORPUS, short="-d", help=(
        "Text: a Hub dataset id, a .txt/.jsonl/.parquet file or a folder of them (.gz too), - for text on"
        " stdin, or jsaectl-sample / jsaectl-heldout (the bundled corpus and its held-out part)."))
    tokens: int = option(1_000_000, short="-n", kind="count", help=(
        "Tokens to harvest: 2000000, 2M, 500k (rounded up to whole contexts)."))
    context_size: int = option(256, short="-T", help="Tokens per context, BOS included.")
    bos: bool = option(True, help="Start every context with the tokenizer's BOS token (when it has one).")
    split: str = option("train", help="Split of a Hub dataset.")
    subset: str | None = option(None, help="Configuration of a Hub dataset (e.g. en for allenai/c4).")
    text_column: str = option("text", help="Column with the text in .jsonl/.parquet files and Hub datasets.")
    lazy: bool = option(False, help=(
        "Store the tokens, not the activations: readers (train, jacobian, maxact, …) compute x from them "
        "with the model, on their own device. About 2 bytes a token instead of 2·d_model, for the paper's "
        "300M-token runs on one machine; readers need the model (checked against the store's fingerprint)."))
    dtype: StoreDtype | None = option(None, help=(
        "Storage precision of x (and y): float16 (the default), bfloat16 (stored as its uint16 bits) or "
        "float32. A --lazy store holds x as the model computes it (float32)."))
    with_output: bool = option(False, help=(
        "Also store the MLP output y (otherwise train recomputes it from the stored MLP weights)."))
    compression: Compression = option("none", help=(
        "How x (and y) are stored: none (the default: activations compress by only ~8%, and uncompressed "
        "they are written ~1.6× and read for training ~1.4× faster) or zstd. Every chunk carries a crc32c"
        " checksum either way."))
    allow_nonfinite: bool = option(False, help=(
        "Store NaN, inf or float16 overflows as 0 and count them in the store's attrs, instead of "
        "stopping with an error naming their rows."))
    model_dtype: StoreDtype = option("float32", help="Precision the model runs in.")
    revision: str | None = option(None, help="Hub revision (branch, tag or commit) of the model.")
    trust_remote_code: bool = option(False, help="Allow models that ship their own Python code. Off unless given.")
    random_init: bool = option(False, help=(
        "Re-initialise the model's weights at random first (the trained-vs-random comparison); see "
        "--init-scheme."))
    init_scheme: InitScheme = option("tl", help=(
        "How --random-init draws: tl (the paper's reference code, TransformerLens init_weights: N(0, "
        "0.8/√d_model) weight matrices, trained biases and norms) or hf (the architecture's own "
        "initialiser)."))
    seed: int = option(0, help="Seed for --random-init.")
    # --- how to run: not part of what the store holds, free to change on resume
    batch_size: int = option(16, short="-b", identity=False, help="Contexts per forward pass.")
    device: str = option("auto", identity=False, help=DEVICE_HELP)
    shard: tuple[int, int] = option((0, 1), kind="shard", identity=False, help=(
        "i/n: fill every n-th chunk starting at i, so n processes fill one store."))
    out: str | None = option(None, short="-o", identity=False, help=(
        "Where to write the store: a path or an fsspec URL (s3://…). Default: "
        "runs/<model>[-random][-lazy]-L<layer>-<tokens>-<hash>.zarr."))
    overwrite: bool = option(False, identity=False, help=(
        "Replace an existing store at --out that was made with a different config."))

    def __post_init__(self) -> None:
        check_types(self)
        if self.layer is not None and self.layer < 0:
            raise ConfigError(f"--layer must be >= 0, not {self.layer}", hint="layers count from 0")
        positive(self, "tokens", "batch_size")
        at_most(self, {"batch_size": 1 << 16, "context_size": 1 << 20})
        if self.context_size < 2:
            raise ConfigError(f"--context-size must be at least 2, not {self.context_size}", hint="the default is 256")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"--shard must be i/n with 0 <= i < n, not {i}/{n}", hint="e.g. --shard 0/4 ... --shard 3/4")
        if n > 1 and self.overwrite:
            raise ConfigError("--overwrite cannot be combined with --shard (each shard would wipe the others' work)",
                              hint="delete the store once, then start the shards")
        if n > 1 and self.dataset == "-":
            raise ConfigError("--shard cannot read text from stdin", hint="shards need a file, folder or Hub dataset they can each read")
        if self.lazy:
            self._check_lazy()

    def _check_lazy(self) -> None:
        """What a lazy store cannot be: it holds no activations, and its readers run the model."""
        for flag, given in (("--with-output", self.with_output), ("--allow-nonfinite", self.allow_nonfinite),
                            ("--dtype", self.dtype not in (None, "float32"))):
            if given:
                raise ConfigError(f"{flag} does not apply to --lazy: a lazy store holds tokens, and readers compute x "
                                  "(and y) in the model's own precision", hint=f"drop {flag}, or harvest without --lazy")
        if self.trust_remote_code:
            raise ConfigError("--lazy cannot be combined with --trust-remote-code: every reader of the store would run "
                              "the model's own code", hint="harvest without --lazy (the activations are then stored)")

    def resolved(self) -> HarvestConfig:
        """The config with the defaults that depend on others filled in: the layer (the bundled
        model's default layer) and the storage precision (float32 for --lazy, else float16)."""
        layer = self.layer
        if layer is None and self.model != BUNDLED_MODEL:
            raise ConfigError(f"--layer is required for {self.model}", hint="e.g. --layer 3 (0-based)")
        return replace(self, layer=BUNDLED_DEFAULT_LAYER if layer is None else layer,
                       dtype=self.dtype or ("float32" if self.lazy else "float16"))


# ---------------------------------------------------------------------------------------------
# train


@dataclass(frozen=True)
class TrainConfig:
    OUTPUTS = ("json",)  # see options.OUTPUTS

    acts: str = option("", argument=True, stdin="line", help=(
        "Activations store (path or URL) written by harvest; read from stdin when missing or -."))
    expansion: int = option(32, short="-e", help=(
        "Latents per SAE as a multiple of d_model (ignored when --latents is given)."))
    latents: int | None = option(None, help="Latents per SAE (overrides --expansion).")
    k: int = option(32, short="-k", help="Active latents per token in each SAE (TopK).")
    lam: float | None = option(None, help=(
        "Jacobian penalty λ. Default 0.5·k²/d_model, the reference code's rule of thumb (1.0 for "
        "Pythia-70m, where the paper used 1). 0 trains the plain SAE pair."))
    lam_warmup: float = option(0.05, help="Fraction of the steps over which λ ramps up from 0.")
    lr: float = option(5e-4, help="Adam learning rate.")
    lr_warmup: float = option(0.01, help="Fraction of the steps of linear learning-rate warm-up.")
    lr_decay: float = option(0.2, help="Fraction of the steps, at the end, of linear decay to 0.")
    batch_size: int = option(4096, short="-b", help="Tokens per optimiser step (over all processes).")
    tokens: int | None = option(None, short="-n", kind="count", help=(
        "Tokens to train on (2M, 500k). Default: one pass over the store."))
    seed: int = option(42, help="Seed of the initialisation and of the data order.")
    jacobian_at: JacobianAt = option("x", help=(
        "Where J is evaluated, in training and in every analysis of this JSAE: x (the MLP's slopes at the"
        " true input and the output SAE's active latents of f(x), as the reference code trains) or "
        "reconstruction (exactly f_s = e_y∘f∘d_x at the input code: slopes at x̂ and the output SAE's "
        "active latents of f(x̂), as the paper writes it)."))
    auxk: float = option(0.0, help=(
        "Coefficient of the AuxK dead-latent loss; 0 is off (the paper), 1/32 is Gao et al.'s."))
    auxk_k: int | None = option(None, help="Dead latents AuxK uses. Default d_model/2.")
    dead_tokens: int = option(1_000_000, kind="count", help=(
        "A latent that has not fired in this many tokens counts as dead."))
    grad_clip: float = option(1.0, help="Gradient-norm clip (0: none).")
    buffer_tokens: int = option(32 * 4096, kind="count", help=(
        "Shuffle buffer in tokens, split evenly over the data lanes: each lane shuffles buffer_tokens / "
        "lanes rows at a time, and reads the next such group while serving this one (memory per process ≈ "
        "2 × its lanes' share × d_model × the stored bytes per value, twice that with a stored y)."))
    data_lanes: int | None = option(None, help=(
        "Lanes of the data order. Default: the number of processes; a 1-process run with --data-lanes N "
        "sees the batches of an N-process run."))
    include_bos: bool = option(False, help=(
        "Include the BOS token that starts each context (skipped by default: its activations are "
        "outliers)."))
    autocast: bool | None = option(None, negatable=True, help=(
        "bfloat16 autocast of the SAE matmuls. Default: on for CUDA only."))
    # --- how to run: free to change on resume
    device: str = option("auto", identity=False, help=DEVICE_HELP.removesuffix(".") + " (under torchrun: the local rank's GPU).")
    reader_threads: int = option(4, identity=False, help=(
        "Threads reading and decompressing the store's chunks for training (raise it if training says it "
        "waits for data)."))
    checkpoint_every: int = option(500, identity=False, help=(
        "Steps between checkpoints in the store (0: none by step count)."))
    checkpoint_minutes: float = option(5.0, identity=False, help=(
        "Also checkpoint once this many minutes have passed since the last checkpoint (at the next "
        "logging step), so that a slow run is never lost whole (0: by step count only)."))
    log_every: int = option(10, identity=False, help="Steps between records of history/.")
    resume: bool = option(False, identity=False, help=(
        "Continue the interrupted run at --out (with no ACTS, its options are taken from the store)."))
    keep_checkpoint: bool = option(False, identity=False, help=(
        "Keep the optimiser state in the store when training ends."))
    out: str | None = option(None, short="-o", identity=False, help=(
        "Where to write the store: a path or an fsspec URL. Default: "
        "runs/jsae-<acts>-k<k>-lam<λ>-<hash>.zarr."))
    overwrite: bool = option(False, identity=False, help=(
        "Replace an existing store at --out that was made with a different config."))
    wandb: str | None = option(None, identity=False, help=(
        "W&B project to log to: every metric of history/ at every logging step (the reference code's "
        "names where the quantity is the same), the config, and the final table as the run summary; "
        "the store records the run, and --resume continues it. Offline: WANDB_MODE=offline, then "
        f"`wandb sync`. Needs {WANDB_INSTALL}."))
    wandb_entity: str | None = option(None, identity=False, help="W&B entity (user or team) of the run. Default: W&B's.")
    wandb_name: str | None = option(None, identity=False, help="Name of the W&B run. Default: the store's name.")
    wandb_tags: tuple[str, ...] = option((), identity=False, help=(
        "Tags of the W&B run: repeat the option, or separate them with commas."))

    def __post_init__(self) -> None:
        check_types(self)
        _check_wandb(self, self.wandb_tags)
        positive(self, "k", "expansion", "lr", "batch_size", "tokens", "log_every", "data_lanes", "auxk_k", "buffer_tokens",
                 "dead_tokens", "latents", "reader_threads")
        positive(self, "lam", "auxk", "grad_clip", "checkpoint_every", "checkpoint_minutes", zero=True)
        if self.latents is not None and self.k > self.latents:
            raise ConfigError(f"--k {self.k} is more than --latents {self.latents}", hint="k active latents need at least k latents")
        fractions(self, "lam_warmup", "lr_warmup", "lr_decay")
        if self.lr_warmup + self.lr_decay > 1:
            raise ConfigError("--lr-warmup and --lr-decay together exceed all the steps")

    def resolved(self, d_model: int, n_tokens: int, world: int) -> TrainConfig:
        """The config with the defaults that depend on the store and the number of processes
        filled in: latents, λ, tokens (one pass over ``n_tokens`` usable rows), AuxK's k, lanes."""
        latents = self.latents if self.latents is not None else self.expansion * d_model
        if self.k > latents:
            raise ConfigError(f"--k {self.k} is more than the {latents} latents", hint="lower --k or raise --expansion")
        lanes = self.data_lanes if self.data_lanes is not None else world
        if self.batch_size > n_tokens:
            raise ConfigError(f"--batch-size {self.batch_size:,} is more than the {n_tokens:,} tokens the store holds",
                              hint="lower --batch-size, or harvest more tokens")
        if self.tokens is not None and self.tokens > MAX_PASSES * n_tokens:
            raise ConfigError(f"--tokens {self.tokens:,} would be {self.tokens / n_tokens:,.0f} passes over the store's "
                              f"{n_tokens:,} tokens, more than {MAX_PASSES:,}", hint=f"give at most {MAX_PASSES * n_tokens:,}")
        if lanes % world or self.batch_size % lanes:
            raise ConfigError(f"--batch-size {self.batch_size} must split evenly over {lanes} data lanes, "
                              f"and the lanes over {world} processes")
        return replace(
            self, latents=latents, data_lanes=lanes,
            lam=self.lam if self.lam is not None else round(0.5 * self.k**2 / d_model, 6),
            tokens=self.tokens if self.tokens is not None else max(self.batch_size, n_tokens - n_tokens % self.batch_size),
            auxk_k=self.auxk_k if self.auxk_k is not None else max(1, d_model // 2))

    @property
    def n_steps(self) -> int:
        return max(1, (self.tokens or 0) // self.batch_size)


# ---------------------------------------------------------------------------------------------
# jacobian


@dataclass(frozen=True)
class JacobianConfig:
    OUTPUTS = ("json",)  # see options.OUTPUTS

    jsae: str = option("", argument=True, stdin="line", help=(
        "JSAE store (path or URL) written by train; read from stdin when missing or -."))
    tokens: int = option(200_000, short="-n", kind="count", help=(
        "Tokens to analyse: the first N of the activations store."))
    acts: str | None = option(None, reads=True, help=(
        "Analyse this activations store (e.g. held-out text) instead of the one the JSAE was trained on."))
    thresholds: tuple[float, ...] = option(THRESHOLDS, kind="floats", help=(
        "|J| thresholds of the sparsity summary, comma-separated (the paper's: 0.005, 0.01, 0.015, 0.02, 0.04; "
        "its Figure 1 counts them over k² with BOS left out, as jsaectl does)."))
    normalised_thresholds: tuple[float, ...] = option(NORMALISED_THRESHOLDS, kind="floats", help=(
        "Scale-free summary: count |J| above these multiples of each token's rms |J| (the reference's l2t"
        " norm), comma-separated."))
    per_token: bool = option(False, help="Also store every token's J [N, k, k] with its index arrays (N·k²·4 bytes).")
    linearity: int = option(0, help=(
        "Run the paper's linearity and ablation checks on N sampled active pairs (0: skip)."))
    label_examples: int = option(20, help=(
        "Top activations kept per latent (its label is drawn from them) and per connection whose examples "
        "are stored (--example-connections)."))
    example_connections: int = option(2_000, kind="count0", help=(
        "The strongest connections whose max-activating tokens (by |J|) the store keeps, so that "
        "`maxact --connection` answers from it at once (a second pass over the tokens, computing the "
        "codes and only these connections' J entries; 0: none)."))
    max_pairs: int = option(4_000_000, kind="count", help=(
        "Most latent pairs accumulated at once (memory ≈ 40 bytes each); beyond it the exact sums spill "
        "to disk. Also the most pairs stored, strongest first."))
    seed: int = option(0, help="Seed of the --linearity sample.")
    include_bos: bool = option(False, help=(
        "Include the BOS token that starts each context (skipped by default: its activations are "
        "outliers)."))
    # --- what to show, and how to run: not part of the store
    top: int = option(20, identity=False, help=(
        "Connections shown in the table (ask the store for more with `jsaectl connections`)."))
    batch_size: int = option(1024, short="-b", identity=False, help="Tokens per batch.")
    device: str = option("auto", identity=False, help=DEVICE_HELP)
    out: str | None = option(None, short="-o", identity=False, help=(
        "Where to write the store: a path or an fsspec URL. Default: "
        "runs/jacobian-<jsae>-<tokens>-<hash>.zarr."))
    overwrite: bool = option(False, identity=False, help=(
        "Replace an existing store at --out that was made with a different config."))
    wandb: str | None = option(None, identity=False, help=(
        "W&B project: add the sparsity figures and the top connections to the run the JSAE was trained "
        f"in (train --wandb), or to a new run when it was not logged to this project. Needs {WANDB_INSTALL}."))

    def __post_init__(self) -> None:
        check_types(self)
        _check_wandb(self)
        positive(self, "tokens", "batch_size", "max_pairs", "label_examples")
        positive(self, "example_connections", zero=True)
        at_most(self, {"label_examples": MAX_EXAMPLES, "batch_size": MAX_BATCH_TOKENS, "example_connections": 1_000_000,
                       "linearity": 1_000_000, "top": 1_000_000})
        positive(self, "top", "linearity", zero=True)
        thresholds(self, "thresholds", "normalised_thresholds")


@dataclass(frozen=True)
class ConnectionsConfig:
    OUTPUTS = ("json", "csv")  # see options.OUTPUTS

    store: str = option("", argument=True, stdin="line", help=(
        "Jacobian store (path or URL) written by `jsaectl jacobian`; read from stdin when missing or -."))
    input_latent: tuple[int, ...] = option((), help=(
        "Only connections from this input latent (what does it compute?); repeat for several."))
    output_latent: tuple[int, ...] = option((), help=(
        "Only connections into this output latent (what computes it?); repeat for several."))
    top: int = option(20, help="How many to show, first by --sort (0: all).")
    min_strength: float = option(0.0, help=(
        "Only connections at least this strong (strength = Σ|J| / analysed tokens)."))
    sort: ConnectionSort = option("strength", help=(
        "Order: strength (Σ|J| / tokens: how much of the typical token's Jacobian the pair carries), mean"
        " (mean |J| where both latents are active) or count (tokens where both are)."))

    def __post_init__(self) -> None:
        check_types(self)
        positive(self, "top", "min_strength", zero=True)


# ---------------------------------------------------------------------------------------------
# maxact


@dataclass(frozen=True)
class MaxactConfig:
    OUTPUTS = ("json",)  # see options.OUTPUTS

    jsae: str = option("", argument=True, stdin="line", help=(
        "JSAE store (path or URL), or a jacobian store made from it; read from stdin when missing or -."))
    side: Side = option("in", help="Which SAE --latent / --top-latents refer to: in (MLP input) or out (MLP output).")
    latents: tuple[int, ...] = option((), flag="--latent", help="Latent id (repeat for several).")
    connection: tuple[int, int] | None = option(None, kind="connection", help=(
        "IN:OUT — tokens where input latent IN and output latent OUT both fire."))
    top_latents: int = option(0, help="Show the N latents of --side with the largest total activation.")
    rank_by: RankBy = option("jacobian", help=(
        "For --connection: rank by |J| (jacobian) or by the product of the activations (product)."))
    examples: int = option(10, help="Examples per latent.")
    context: int = option(8, help="Tokens shown on each side of an example.")
    tokens: int | None = option(None, short="-n", kind="count", help=(
        "Scan the first N tokens only. Default: the whole store."))
    acts: str | None = option(None, reads=True, help="Scan this activations store instead of the JSAE's own.")
    include_bos: bool = option(False, help=(
        "Include the BOS token that starts each context (skipped by default: its activations are "
        "outliers)."))
    batch_size: int = option(4096, short="-b", identity=False, help="Tokens per batch.")
    device: str = option("auto", identity=False, help=DEVICE_HELP)

    def __post_init__(self) -> None:
        check_types(self)
        modes = bool(self.latents) + (self.connection is not None) + (self.top_latents > 0)
        if modes != 1:
            raise ConfigError("give exactly one of --latent, --connection or --top-latents",
                              hint="e.g. --side out --latent 123, --connection 45:123, or --top-latents 5")
        positive(self, "examples", "batch_size", "tokens")
        positive(self, "context", zero=True)
        at_most(self, {"examples": MAX_EXAMPLES, "context": MAX_EXAMPLES, "batch_size": MAX_BATCH_TOKENS})

    def check_latents(self, n_latents: int) -> None:
        """Refuse latent ids the SAEs do not have (known once the store is open)."""
        check_latent_ids((*self.latents, *(self.connection or ())), n_latents)
        if self.top_latents > n_latents:
            raise ConfigError(f"--top-latents {self.top_latents} is more than the {n_latents} latents")


# ---------------------------------------------------------------------------------------------
# compare


@dataclass(frozen=True)
class CompareConfig:
    OUTPUTS = ("json", "csv", "plot")  # see options.OUTPUTS

    stores: tuple[str, ...] = option((), argument=True, stdin="lines", help=(
        "jsae stores, or jacobian stores standing for the JSAE they were made from; read one per line "
        "from stdin when missing."))
    acts: str | None = option(None, reads=True, help=(
        "Evaluate every run on this activations store (held-out text). Default: each run's own."))
    tokens: int = option(50_000, short="-n", kind="count", help="Tokens for reconstruction and Jacobian sparsity.")
    eval_tokens: int = option(20_000, kind="count0", help=(
        "Tokens for the CE/KL splice scores (0 skips loading the model)."))
    thresholds: tuple[float, ...] = option(THRESHOLDS, kind="floats", help="|J| thresholds, comma-separated.")
    normalised_thresholds: tuple[float, ...] = option(NORMALISED_THRESHOLDS, kind="floats", help=(
        "Scale-free rows: |J| above these multiples of each token's rms |J|, comma-separated."))
    batch_size: int = option(1024, short="-b", identity=False, help="Tokens per batch.")
    device: str = option("auto", identity=False, help=DEVICE_HELP)
    wandb: str | None = option(None, identity=False, help=(
        "W&B project: add each JSAE's metrics and the comparison table to the run it was trained in "
        f"(train --wandb), or to a new run when it was not logged to this project. Needs {WANDB_INSTALL}."))

    def __post_init__(self) -> None:
        check_types(self)
        _check_wandb(self)
        positive(self, "tokens", "batch_size")
        positive(self, "eval_tokens", zero=True)
        at_most(self, {"batch_size": MAX_BATCH_TOKENS})
        thresholds(self, "thresholds", "normalised_thresholds")


# ---------------------------------------------------------------------------------------------
# report


@dataclass(frozen=True)
class ReportConfig:
    OUTPUTS = ("json",)  # see options.OUTPUTS

    store: str = option("", argument=True, stdin="line", help=(
        "Jacobian store (path or URL) written by `jsaectl jacobian`; read from stdin when missing or -."))
    out: str = option("", short="-o", required=True, help=(
        "Directory to write the report into (index.html and its pages; created if missing)."))
    connections: int = option(40, help=(
        "The strongest connections drawn in the graph, each with a page of where it acts."))
    examples: int = option(8, help="Max-activating contexts shown per latent and per connection.")
    context: int = option(10, help="Tokens shown on each side of an example.")
    tokens: int = option(100_000, short="-n", kind="count", help=(
        "Tokens scanned for the examples (the first ones of the activations the jacobian store analysed)."))
    batch_size: int = option(1024, short="-b", help="Tokens per batch.")
    device: str = option("auto", help=DEVICE_HELP)
    overwrite: bool = option(False, help="Write into a non-empty --out, replacing the report that is there.")

    def __post_init__(self) -> None:
        check_types(self)
        if not self.out:
            raise ConfigError("no output directory given", hint="pass --out DIR")
        positive(self, "connections", "examples", "tokens", "batch_size")
        positive(self, "context", zero=True)
        at_most(self, {"connections": MAX_EXAMPLES, "examples": MAX_EXAMPLES, "context": MAX_EXAMPLES,
                       "batch_size": MAX_BATCH_TOKENS})


# ---------------------------------------------------------------------------------------------
# export and import


@dataclass(frozen=True)
class ExportConfig:
    OUTPUTS = ("json",)  # see options.OUTPUTS

    store: str = option("", argument=True, stdin="line", help=(
        "jsae store (weight formats) or jacobian store (connection formats; for weight formats it stands "
        "for the JSAE it was made from), path or URL; read from stdin when missing or -."))
    format: Format = option("", short="-f", required=True, help=(
        "What to write: saelens, sparsify, jsae-pair, connections-csv or connections-jsonl."))
    out: str = option("", short="-o", required=True, help="Directory to write (a local path; created if missing).")
    top: int | None = option(None, help=(
        "Connection formats: write the N strongest connections (default 10,000; 0: all of them)."))
    overwrite: bool = option(False, help=(
        "Write into a non-empty DIR, replacing only the files and folders this format writes."))

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown export format {shown(self.format)}", hint="choose one of: " + ", ".join(FORMATS))
        check_types(self)
        if not self.out:
            raise ConfigError("no output directory given", hint="pass --out DIR")
        if self.top is not None and self.format not in CONNECTION_FORMATS:
            raise ConfigError(f"--top applies to {' and '.join(CONNECTION_FORMATS)} only, not {self.format}",
                              hint="drop --top: weight formats always hold every latent")
        if self.top is not None and self.top < 0:
            raise ConfigError(f"--top must be >= 0, not {self.top}", hint="--top 0 writes every connection")


@dataclass(frozen=True)
class ImportConfig:
    OUTPUTS = ("json",)  # see options.OUTPUTS

    pair: str = option("", argument=True, required=True, help=(
        "Folder with the pair's cfg.json and sae_weights.safetensors."))
    acts: str = option("", required=True, reads=True, help=(
        "Activations store of the model and layer the pair was trained on (from `jsaectl harvest`)."))
    jacobian_at: JacobianAt | None = option(None, help=(
        "Where analyses evaluate J: x or reconstruction. Default: the pair's own setting if jsaectl "
        "exported it, else x (where the reference trains)."))
    out: str | None = option(None, short="-o", help=(
        "Where to write the jsae store. Default: runs/jsae-imported-<pair folder>-<hash>.zarr."))
    overwrite: bool = option(False, help="Replace an existing store at --out that was made from another pair.")

    def __post_init__(self) -> None:
        if not self.pair:
            raise ConfigError("no pair folder given", hint="jsaectl import PAIR_DIR --acts ACTS")
        if not self.acts:
            raise ConfigError("--acts is required: the activations store of the model and layer the pair was trained on",
                              hint="harvest them with `jsaectl harvest MODEL --layer L`")
        check_types(self)

# ---------------------------------------------------------------------------------------------
# trace


@dataclass(frozen=True)
class TraceConfig:
    OUTPUTS = ("json", "html")  # see options.OUTPUTS

    jsae: str = option("", argument=True, stdin="line", help=(
        "JSAE store (path or URL), or a jacobian store made from it (its labels are then used); read "
        "from stdin when missing or -."))
    text: str | None = option(None, help="The text to trace; - reads it from stdin.")
    file: str | None = option(None, help="A UTF-8 text file to trace instead of --text.")
    top: int = option(5, help="Latents and J entries shown per token.")
    connections: int = option(20, help="Connections shown for the whole text, strongest Σ|J| over its tokens first.")
    label_tokens: int = option(100_000, kind="count", help=(
        "When JSAE is a jsae store: tokens of its activations scanned to label the latents shown, as "
        "`jacobian` labels them (a jacobian store holds labels: nothing is scanned)."))
    include_bos: bool = option(False, help=(
        "Include the BOS token that starts each context (skipped by default, as in training)."))
    batch_size: int = option(1024, short="-b", help="Tokens per batch when labelling.")
    device: str = option("auto", help=DEVICE_HELP)

    def __post_init__(self) -> None:
        check_types(self)
        positive(self, "top", "connections", "label_tokens", "batch_size")
        at_most(self, {"top": MAX_EXAMPLES, "connections": 1_000_000, "batch_size": MAX_BATCH_TOKENS})
        if (self.text is None) == (self.file is None):
            raise ConfigError("give the text with --text or --file (one of them)",
                              hint='e.g. --text "Der Hund bellt." or --file notes.txt, or --text - with text on stdin')


# ---------------------------------------------------------------------------------------------
# contrast


@dataclass(frozen=True)
class ContrastConfig:
    OUTPUTS = ("json",)  # see options.OUTPUTS

    jsae: str = option("", argument=True, stdin="line", help=(
        "JSAE store (path or URL), or a jacobian store made from it (its labels and connections are then "
        "used); read from stdin when missing or -."))
    a: str = option("", required=True, help=(
        "Text A, whose latents are looked for: what harvest --dataset accepts, or SOURCE:key=value,… to "
        "keep the documents with those labels (the bundled corpus's: lang, source, register; e.g. "
        "jsaectl-sample:lang=de)."))
    b: str = option("", required=True, help="Text B, to tell A from: a SOURCE as for --a (e.g. jsaectl-sample:lang=en).")
    tokens: int = option(50_000, short="-n", kind="count", help="Tokens read from each side (whole contexts).")
    top: int = option(10, help="Input and output latents shown, most specific to A first.")
    inputs: int = option(8, help="Input latents shown computing each top output latent.")
    text_column: str = option("text", help="Column with the text in .jsonl/.parquet files and Hub datasets.")
    label_tokens: int = option(100_000, kind="count", help=(
        "When JSAE is a jsae store: tokens of its activations scanned to label the latents shown, as "
        "`jacobian` labels them (a jacobian store holds labels: nothing is scanned)."))
    include_bos: bool = option(False, help=(
        "Include the BOS token that starts each context (skipped by default, as in training)."))
    batch_size: int = option(16, short="-b", help="Contexts per forward pass (and per batch when labelling latents).")
    device: str = option("auto", help=DEVICE_HELP)

    def __post_init__(self) -> None:
        check_types(self)
        positive(self, "tokens", "top", "inputs", "label_tokens", "batch_size")
        at_most(self, {"top": 1_000_000, "inputs": 1_000_000, "batch_size": 1 << 16})
        if not self.a or not self.b:
            raise ConfigError("give both texts: --a SOURCE --b SOURCE", hint="e.g. --a jsaectl-sample:lang=de --b jsaectl-sample:lang=en")
        if self.a == self.b:
            raise ConfigError(f"--a and --b are the same source ({shown(self.a)}): no latent can tell it from itself",
                              hint="e.g. --a jsaectl-sample:lang=de --b jsaectl-sample:lang=en")


# ---------------------------------------------------------------------------------------------
# verify


@dataclass(frozen=True)
class VerifyConfig:
    OUTPUTS = ("json",)  # see options.OUTPUTS

    stores: tuple[str, ...] = option((), argument=True, stdin="lines", help=(
        "Stores to check (paths or URLs): any jsaectl store; read one per line from stdin when missing."))
    repair: bool = option(False, help=(
        "Re-harvest the damaged chunks of an activations store (loads the model and reads the text "
        "again), then check it again."))

    def __post_init__(self) -> None:
        check_types(self)
