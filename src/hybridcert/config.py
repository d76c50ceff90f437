"""The configuration of a certification run: frozen groups of options, checked before any work.

A certification run is described once, by a frozen :class:`RunConfig` in
groups (data, model, noise and threat, decision rule, estimation, executor).
It is built from the command line (:meth:`RunConfig.from_args`) or from
Python. The estimation group is the engine's own
:class:`~hybridcert.spec.EstimationSpec` (``EstimationConfig`` is its other
name), checked when it is built; its errors reach the command line as
:class:`ConfigError` naming the ``--flag``. :meth:`RunConfig.validate` checks
every other value on its own; a mistake
raises :class:`ConfigError`, a ``ValueError`` that names the argument and what
is expected. The checks that need the registries of data sets and models
live in :mod:`hybridcert.registries`; :func:`hybridcert.run.plan` runs both.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validation import ParameterError
from .sampling import MAX_ERROR_RATE, ON_MODEL_ERROR
from .spec import AUTO_BATCH, PROTOCOLS, SAMPLINGS, EstimationSpec  # noqa: F401 (re-exported)

__all__ = ["ConfigError", "DataConfig", "DecisionConfig", "EstimationConfig", "ExecutorConfig",
           "ModelConfig", "NoiseConfig", "RunConfig"]

KERNELS = ("uniform", "absorbing")
THREATS = ("l0", "suffix", "append")
BASELINES = ("none", "image-only", "text-only")
DECISIONS = ("auto", "threshold", "majority")
EXECUTORS = ("local", "ray")
HF_RULES = ("logit_mass", "generate")
HF_TASKS = ("auto", "image-text-to-text", "text-generation", "text-classification")
ATTACKER_ALPHABETS = ("any", "noise")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# The command-line flag of a spec argument whose name does not spell it.
_FLAGS = {"targets": "--target"}


def parse_batch_size(text: str) -> int | str:
    """``--batch-size``: an integer, or ``auto`` (hf: guards settle their forward batch)."""
    return text if text == "auto" else int(text)


def parse_target(text: str) -> tuple[int, float]:
    """``--target D:R``: a discrete budget ``D`` (integer >= 0) and an L2 radius ``R``; the
    spec checks the pair (:class:`~hybridcert.spec.EstimationSpec`)."""
    d, sep, r = text.partition(":")
    try:
        if not sep or not d.strip().isdigit():
            raise ValueError
        budget, radius = int(d), float(r)
    except ValueError:
        raise ConfigError("--target", "D:R, a budget D (integer >= 0) and a radius R >= 0, "
                          "such as 1:0.5", text) from None
    if not np.isfinite(radius) or radius < 0:  # said in the option's words; the spec checks too
        raise ConfigError("--target", "D:R with a finite radius R >= 0", text)
    return budget, radius


class ConfigError(ValueError):
    """A user mistake in the run configuration: names the argument and what is expected."""

    def __init__(self, argument: str, expected: str, got=None):
        self.argument = argument
        shown = "" if got is None else f", got {got!r}"
        super().__init__(f"{argument}: expected {expected}{shown}")

    @classmethod
    def from_parameter(cls, err: ParameterError) -> ConfigError:
        """A library argument error as the command line says it: named by its ``--flag``."""
        return cls(_FLAGS.get(err.name, "--" + err.name.replace("_", "-")), err.expected, err.got)


# --------------------------------------------------------------------------- the configuration


@dataclass(frozen=True)
class DataConfig:
    """What is certified: a registered data set, its folder and split, how many examples.

    ``split`` and the column options are read by the on-disk sources that
    name them (:attr:`~hybridcert.registries.DataSource.options`); None
    leaves each its own default: Hateful Memes' split ``dev_seen``, hf-disk's
    columns ``text``, ``image`` and ``label`` (a ``DatasetDict`` has no
    default split), MM-SafetyBench's question field by image type.
    ``image_column="none"`` reads a text-only hf-disk set.

    The ``metadata`` of every field is its command-line option (``flag``,
    ``help``, ``choices``, ``type``, ``metavar``, ``action``; see
    :func:`hybridcert.cli.add_config_arguments`); the default is the field's.
    """

    dataset: str = field(default="mm-interaction", metadata={
        "help": None})  # choices and help: the registry's data sets (cli.py)
    data_path: str | None = field(default=None, metadata={
        "help": "folder of an on-disk data set (or $HYBRIDCERT_HATEFUL_MEMES / "
        "$HYBRIDCERT_MMSAFETYBENCH), or the Adult file"})
    split: str | None = field(default=None, metadata={
        "flag": "--split", "help": "Hateful Memes' split (dev_seen), or the split of an "
        "hf-disk DatasetDict (required there)"})
    image_size: int | None = field(default=None, metadata={
        "help": "image size for an hf: guard (processor's)"})
    limit: int | None = field(default=None, metadata={
        "help": "certify only the first N test examples"})
    text_column: str | None = field(default=None, metadata={
        "flag": "--text-column", "help": "hf-disk: column of the user's text (text); "
        "mm-safetybench: question field such as 'Question' or 'Rephrased Question'"})
    image_column: str | None = field(default=None, metadata={
        "flag": "--image-column", "help": "hf-disk: column of the image, an Image() feature or a "
        "path (image); 'none' for a text-only set"})
    label_column: str | None = field(default=None, metadata={
        "flag": "--label-column", "help": "hf-disk: column of the label, 0/1, boolean or "
        "safe/unsafe names (label)"})
    filter_column: str | None = field(default=None, metadata={
        "flag": "--filter-column", "help": "hf-disk: boolean column; only its true rows are "
        "certified (UnsafeBench: mm_unsafe)"})
    constant_label: int | None = field(default=None, metadata={
        "flag": "--constant-label", "choices": (0, 1), "help": "hf-disk: the label of every row "
        "(1 = unsafe), instead of a label column"})


@dataclass(frozen=True)
class ModelConfig:
    """The base model: a registered prefix (``demo``, ``sklearn:PATH``, ``hf:NAME``) and options."""

    model: str = field(default="demo", metadata={
        "help": None})  # metavar and help: the registry's model prefixes (cli.py)
    policy: str | None = field(default=None, metadata={"help": "policy text of an hf: guard"})
    hf_rule: str = field(default="logit_mass", metadata={
        "choices": HF_RULES,
        "help": "how an hf: chat guard decides: Safe/Unsafe next-token mass, or generation"})
    hf_task: str = field(default="auto", metadata={  # auto: read from the model's config
        "choices": HF_TASKS,
        "help": "kind of hf: guard (auto: from the model's config): a VLM, a causal LM "
        "answering safe/unsafe, or a sequence classifier; text guards take no image (sigma "
        "none)"})
    hf_flagged: str | None = field(default=None, metadata={  # a text-classification guard's
        "metavar": "LABELS",
        "help": "flagged labels of a text-classification guard, by name or index, "
        "comma-separated (e.g. INJECTION,JAILBREAK; default: every label but 0)"})
    device: str = field(default="cpu", metadata={
        "help": "device of an hf: guard (cpu, cuda, ...)"})
    dtype: str = field(default="auto", metadata={
        "choices": DTYPES, "help": "precision of an hf: guard (auto: bfloat16 on CUDA, else "
        "float32)"})
    cache_dir: str | None = field(default=None, metadata={"help": "where demo models are cached"})
    on_model_error: str = field(default=ON_MODEL_ERROR[0], metadata={
        "choices": ON_MODEL_ERROR,
        "help": "a model call that raises: raise (default: the example fails, never reads as "
        "safe) or flag (the sample counts as flagged under the threshold rule, as an "
        "abstention under the majority rule)"})
    max_error_rate: float = field(default=MAX_ERROR_RATE, metadata={
        "help": f"share of an example's samples that may fail under --on-model-error flag "
                f"before the example fails ({MAX_ERROR_RATE})"})


@dataclass(frozen=True)
class NoiseConfig:
    """Smoothing noise and threat region (tables always use categorical substitution)."""

    kernel: str = field(default="uniform", metadata={
        "choices": KERNELS, "help": "discrete noise on text tokens (tables always use "
        "categorical substitution)"})
    beta: float = field(default=0.25, metadata={"help": "substitution probability (0.25)"})
    sigma: float = field(default=0.5, metadata={"help": "Gaussian noise level (0.5)"})
    threat: str = field(default="l0", metadata={
        "choices": THREATS,
        "help": "which positions are noised and attackable (default l0: all)"})
    threat_size: int = field(default=4, metadata={
        "help": "suffix length or number of appended positions (default 4)"})
    filler: int = field(default=0, metadata={"help": "token id of appended fillers"})
    attacker_alphabet: str = field(default="any", metadata={
        "choices": ATTACKER_ALPHABETS,
        "help": "symbols the attacker may write: any (default, safe) or only the noise "
        "alphabet's (an assumption about the tokenizer and input channel, recorded in the "
        "results)"})
    baseline: str = field(default="none", metadata={
        "choices": BASELINES, "help": "certify a baseline: image-only (Gaussian only) or "
        "text-only (token noise only)"})
    denoiser: str | None = field(default=None, metadata={  # denoised smoothing (hf: image guards)
        "metavar": "diffusers:PATH_OR_NAME",
        "help": "denoised smoothing for an hf: image guard: a diffusers UNet2DModel and its "
        "DDPMScheduler denoise each noisy image in one step at the noise level 2 sigma of "
        "its [-1, 1] scale (the noise itself stays sigma in the guard's pixels)"})


@dataclass(frozen=True)
class DecisionConfig:
    """The requested rule; ``auto`` is resolved by :func:`plan` into a DecisionRule."""

    decision: str = field(default="auto", metadata={
        "choices": DECISIONS,
        "help": "threshold: flag --target-label iff its probability >= --tau; majority: most "
        "probable label; auto: threshold for mm-interaction and hf:, else majority"})
    tau: float = field(default=0.05, metadata={
        "help": "threshold of the threshold rule (0.05; the paper's 4.6e-5 suits a "
        "near-deterministic guard)"})
    target_label: int = field(default=1, metadata={
        "help": "label certified by the threshold rule (default 1 = unsafe)"})


# The estimation options are the engine's own spec (one definition, checked on construction).
EstimationConfig = EstimationSpec


@dataclass(frozen=True)
class ExecutorConfig:
    """Where examples run; nothing here changes a result."""

    executor: str = field(default="local", metadata={
        "choices": EXECUTORS, "help": "run examples here, or on Ray actors, one model replica "
        "each (hybridcert[ray])"})
    ray_address: str | None = field(default=None, metadata={
        "help": "a Ray cluster ('auto', 'ray://host:10001')"})
    workers: int = field(default=2, metadata={"help": "Ray actors (model replicas), 2"})
    cpus_per_worker: float = field(default=1, metadata={"help": "CPUs per actor (1)"})
    gpus_per_worker: float = field(default=0, metadata={"help": "GPUs per actor (0)"})
    max_in_flight: int | None = field(default=None, metadata={
        "help": "examples submitted but unfinished, at most (default 2 x workers)"})
    threads: int | None = field(default=None, metadata={
        "help": "torch threads (default: the CPUs this process may use minus the load on "
        "them)"})
    progress: bool = field(default=True, metadata={"cli": False})  # the CLI's --no-progress
    report: bool = field(default=True, metadata={"cli": False})  # the CLI's --no-report
    max_retries: int = field(default=2, metadata={
        "help": "retries of an example whose certification raised, before a failed row (2); "
        "the next run retries failed rows"})


@dataclass(frozen=True)
class RunConfig:
    """A whole certification run, validated before any work (see the module docstring).

    Examples
    --------
    >>> config = RunConfig(estimation=EstimationConfig(n=500), out="runs/demo")
    >>> config.validate().estimation.n
    500
    >>> RunConfig(noise=NoiseConfig(sigma=-1)).validate()
    Traceback (most recent call last):
    ...
    hybridcert.config.ConfigError: --sigma: expected a number > 0, got -1
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    estimation: EstimationConfig = field(default_factory=EstimationConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    out: str | None = None

    @classmethod
    def from_args(cls, args) -> RunConfig:
        """The configuration an ``argparse`` namespace of ``hybridcert certify`` describes."""
        given = vars(args)

        def group(kind):
            return kind(**{f.name: given[f.name] for f in dataclasses.fields(kind)
                           if f.name in given})

        try:
            estimation = group(EstimationSpec)
        except ParameterError as err:
            raise ConfigError.from_parameter(err) from None
        return cls(data=group(DataConfig), model=group(ModelConfig), noise=group(NoiseConfig),
                   decision=group(DecisionConfig), estimation=estimation,
                   executor=dataclasses.replace(group(ExecutorConfig),
                                                progress=not given.get("no_progress", False),
                                                report=not given.get("no_report", False)),
                   out=given.get("out"))

    @property
    def out_dir(self) -> Path:
        return Path(self.out or os.path.join("runs", self.data.dataset))

    def validate(self) -> RunConfig:
        """Check every value on its own; return ``self`` or raise :class:`ConfigError`.

        What depends on the registries (the data set and model names, their
        own checks) is checked by :func:`hybridcert.registries.check_config`;
        :func:`hybridcert.run.plan` runs both before any work.
        """
        d, m, z, r, e, x = (self.data, self.model, self.noise, self.decision, self.estimation,
                            self.executor)
        _positive_int("--limit", d.limit, optional=True)
        _positive_int("--image-size", d.image_size, optional=True)
        for name in ("split", "text_column", "image_column", "label_column", "filter_column"):
            value = getattr(d, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError("--" + name.replace("_", "-"), "a non-empty name", value)
        if d.constant_label is not None:
            if isinstance(d.constant_label, bool) or d.constant_label not in (0, 1):
                raise ConfigError("--constant-label", "0 or 1 (1 = unsafe)", d.constant_label)
            if d.label_column is not None:
                raise ConfigError("--constant-label", "either a label column or a constant "
                                  "label, not both", d.constant_label)
        if e.batch_size == "auto" and not m.model.startswith("hf:"):
            raise ConfigError("--batch-size", "an integer (--batch-size auto applies to hf: "
                              "guards)", "auto")
        _choice("--hf-rule", m.hf_rule, HF_RULES)
        _choice("--hf-task", m.hf_task, HF_TASKS)
        _choice("--dtype", m.dtype, DTYPES)
        _choice("--on-model-error", m.on_model_error, ON_MODEL_ERROR)
        if isinstance(m.max_error_rate, bool) or not isinstance(m.max_error_rate, int | float) \
                or not 0 <= m.max_error_rate <= 1:   # NaN fails the comparison too
            raise ConfigError("--max-error-rate", "a share in [0, 1]", m.max_error_rate)
        if m.on_model_error == "raise" and m.max_error_rate != MAX_ERROR_RATE:
            raise ConfigError("--max-error-rate", "no value with --on-model-error raise (the "
                              "first failed sample fails the example; read by "
                              "--on-model-error flag)", m.max_error_rate)
        _choice("--kernel", z.kernel, KERNELS)
        _choice("--threat", z.threat, THREATS)
        _choice("--baseline", z.baseline, BASELINES)
        if z.denoiser is not None:
            if not isinstance(z.denoiser, str) or not z.denoiser.startswith("diffusers:") or \
                    not z.denoiser.split(":", 1)[1]:
                raise ConfigError("--denoiser", "diffusers:PATH_OR_NAME (a UNet2DModel with its "
                                  "DDPMScheduler)", z.denoiser)
            if not m.model.startswith("hf:"):
                raise ConfigError("--denoiser", "an hf: image guard as --model (the denoiser "
                                  "reads RGB images)", m.model)
            if z.baseline == "text-only":
                raise ConfigError("--denoiser", "no --baseline text-only (no Gaussian noise to "
                                  "denoise)", z.denoiser)
        _choice("--attacker-alphabet", z.attacker_alphabet, ATTACKER_ALPHABETS)
        _unit_interval("--beta", z.beta, "a number in (0, 1]", upper_closed=True)
        _positive("--sigma", z.sigma)
        _positive_int("--threat-size", z.threat_size)
        _int("--filler", z.filler, minimum=0)
        _choice("--decision", r.decision, DECISIONS)
        _unit_interval("--tau", r.tau, "a number in the open interval (0, 1)")
        _int("--target-label", r.target_label, minimum=0)
        _choice("--executor", x.executor, EXECUTORS)
        _positive_int("--workers", x.workers)
        _positive("--cpus-per-worker", x.cpus_per_worker)
        if isinstance(x.gpus_per_worker, bool) or not isinstance(x.gpus_per_worker, (int, float)) \
                or not np.isfinite(x.gpus_per_worker) or x.gpus_per_worker < 0:
            raise ConfigError("--gpus-per-worker", "a finite number >= 0", x.gpus_per_worker)
        _positive_int("--max-in-flight", x.max_in_flight, optional=True)
        _positive_int("--threads", x.threads, optional=True)
        _int("--max-retries", x.max_retries, minimum=0)
        if z.threat == "append" and not m.model.startswith("hf:"):
            # The data sets hold fixed-length inputs, and the registered models read them so;
            # an hf: text guard reads the user text then the slot (checked by its entry).
            raise ConfigError("--threat", "l0 or suffix: append needs a model that reads a "
                              "trusted part followed by an untrusted slot of --threat-size "
                              "symbols, which the command line's models other than hf: "
                              "text guards do not (the demo model reads exactly its 10 "
                              "tokens); certify such a model from Python "
                              "with threat=AppendOnly(m, filler) and "
                              "hybridcert.AppendInput(trusted)", "append")
        return self



def _int(name, value, *, minimum, optional=False):
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(name, f"an integer >= {minimum}", value)


def _positive_int(name, value, optional=False):
    _int(name, value, minimum=1, optional=optional)


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            np.isfinite(value) and value > 0):
        raise ConfigError(name, "a number > 0", value)


def _unit_interval(name, value, expected, upper_closed=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value and (
        value <= 1 if upper_closed else value < 1)
    if not ok:
        raise ConfigError(name, expected, value)


def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(name, f"one of {', '.join(choices)}", value)
