"""The run layer: one validated configuration, registries of data and models, one builder.

A certification run is described once, by a frozen :class:`RunConfig` in
groups (data, model, noise and threat, decision rule, estimation, executor).
It is built from the command line (:meth:`RunConfig.from_args`) or from
Python, and checked completely by :meth:`RunConfig.validate` before any work:
before a model is trained or loaded and before any file is written. A mistake
raises :class:`ConfigError`, a ``ValueError`` that names the argument and what
is expected.

:func:`plan` then loads the data (never the model), checks what depends on it
(``d_max`` against the attackable positions, the append threat against the
model's input length), and resolves once what ``auto`` left open: the
decision rule (a :class:`~hybridcert.decision.DecisionRule`), tau and the
target label. :meth:`Plan.settings` produces ``run.json`` for ``hybridcert certify``;
:func:`~hybridcert.runner.certify_dataset` (Python runs) writes its own, from the smoothed
classifier's :meth:`~hybridcert.smoothing.SmoothedClassifier.settings_for`, and
:func:`~hybridcert.runner.prepare_run_dir` checks or records either.
:class:`SmoothedBuilder` is the one picklable recipe for the smoothed
classifier: the local executor calls it once, every Ray worker calls it once,
and the Ray driver never does.

Registries. :data:`DATA_SOURCES` maps ``--dataset`` names to loaders and
:data:`MODELS` maps ``--model`` prefixes to builders;
:func:`register_dataset` and :func:`register_model` add your own, and the
command line offers what they hold.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .datasets.base import Split
from .decision import DecisionRule

logger = logging.getLogger(__name__)

__all__ = ["DATA_SOURCES", "MODELS", "ConfigError", "DataConfig", "DecisionConfig",
           "EstimationConfig", "ExecutorConfig", "ModelConfig", "NoiseConfig", "Plan",
           "RunConfig", "SmoothedBuilder", "Task", "certify_run", "plan", "register_dataset",
           "register_model"]

KERNELS = ("uniform", "absorbing")
THREATS = ("l0", "suffix", "append")
BASELINES = ("none", "image-only", "text-only")
DECISIONS = ("auto", "threshold", "majority")
PROTOCOLS = ("shared", "per_budget")
EXECUTORS = ("local", "ray")
HF_RULES = ("logit_mass", "generate")
ATTACKER_ALPHABETS = ("any", "noise")
SAMPLINGS = ("fixed", "sequential")
DTYPES = ("auto", "float32", "bfloat16", "float16")
AUTO_BATCH = 1024  # noise samples per engine batch under --batch-size auto


def parse_batch_size(text: str) -> int | str:
    """``--batch-size``: an integer, or ``auto`` (hf: guards settle their forward batch)."""
    return text if text == "auto" else int(text)


class ConfigError(ValueError):
    """A user mistake in the run configuration: names the argument and what is expected."""

    def __init__(self, argument: str, expected: str, got=None):
        self.argument = argument
        shown = "" if got is None else f", got {got!r}"
        super().__init__(f"{argument}: expected {expected}{shown}")


# --------------------------------------------------------------------------- the configuration


@dataclass(frozen=True)
class DataConfig:
    """What is certified: a registered data set, its folder and split, how many examples."""

    dataset: str = "mm-interaction"
    data_path: str | None = None
    split: str = "dev_seen"
    image_size: int | None = None
    limit: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The base model: a registered prefix (``demo``, ``sklearn:PATH``, ``hf:NAME``) and options."""

    model: str = "demo"
    policy: str | None = None
    hf_rule: str = "logit_mass"
    device: str = "cpu"
    dtype: str = "auto"
    cache_dir: str | None = None
    batch_size: int | str = 1000  # "auto": hf: guards settle their forward batch themselves


@dataclass(frozen=True)
class NoiseConfig:
    """Smoothing noise and threat region (tables always use categorical substitution)."""

    kernel: str = "uniform"
    beta: float = 0.25
    sigma: float = 0.5
    threat: str = "l0"
    threat_size: int = 4
    filler: int = 0
    attacker_alphabet: str = "any"
    baseline: str = "none"


@dataclass(frozen=True)
class DecisionConfig:
    """The requested rule; ``auto`` is resolved by :func:`plan` into a DecisionRule."""

    decision: str = "auto"
    tau: float = 0.05
    target_label: int = 1


@dataclass(frozen=True)
class EstimationConfig:
    """Statistics of every example: selection and estimation samples, alpha, budgets, seed."""

    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    d_max: int | None = None
    protocol: str = "shared"
    seed: int = 0
    sampling: str = "fixed"
    n_max: int = 100_000


@dataclass(frozen=True)
class ExecutorConfig:
    """Where examples run; nothing here changes a result."""

    executor: str = "local"
    ray_address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    max_in_flight: int | None = None
    threads: int | None = None
    progress: bool = True
    report: bool = True
    max_retries: int = 2


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
    hybridcert.run.ConfigError: --sigma: expected a number > 0, got -1
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

        return cls(data=group(DataConfig), model=group(ModelConfig), noise=group(NoiseConfig),
                   decision=group(DecisionConfig), estimation=group(EstimationConfig),
                   executor=dataclasses.replace(group(ExecutorConfig),
                                                progress=not given.get("no_progress", False),
                                                report=not given.get("no_report", False)),
                   out=given.get("out"))

    @property
    def out_dir(self) -> Path:
        return Path(self.out or os.path.join("runs", self.data.dataset))

    def validate(self) -> RunConfig:
        """Check every value that needs no data; return ``self`` or raise :class:`ConfigError`."""
        d, m, z, r, e, x = (self.data, self.model, self.noise, self.decision, self.estimation,
                            self.executor)
        source = DATA_SOURCES.get(d.dataset)
        if source is None:
            raise ConfigError("--dataset", f"one of {', '.join(DATA_SOURCES)}", d.dataset)
        entry = model_entry(m.model)
        _positive_int("--limit", d.limit, optional=True)
        _positive_int("--image-size", d.image_size, optional=True)
        if m.batch_size != "auto":
            _positive_int("--batch-size", m.batch_size)
        elif not m.model.startswith("hf:"):
            raise ConfigError("--batch-size", "an integer (--batch-size auto applies to hf: "
                              "guards)", "auto")
        _choice("--hf-rule", m.hf_rule, HF_RULES)
        _choice("--dtype", m.dtype, DTYPES)
        _choice("--kernel", z.kernel, KERNELS)
        _choice("--threat", z.threat, THREATS)
        _choice("--baseline", z.baseline, BASELINES)
        _choice("--attacker-alphabet", z.attacker_alphabet, ATTACKER_ALPHABETS)
        _unit_interval("--beta", z.beta, "a number in (0, 1]", upper_closed=True)
        _positive("--sigma", z.sigma)
        _positive_int("--threat-size", z.threat_size)
        _int("--filler", z.filler, minimum=0)
        _choice("--decision", r.decision, DECISIONS)
        _unit_interval("--tau", r.tau, "a number in the open interval (0, 1)")
        _int("--target-label", r.target_label, minimum=0)
        _positive_int("--n0", e.n0)
        _positive_int("--n", e.n)
        _unit_interval("--alpha", e.alpha, "a number in the open interval (0, 1)")
        _int("--d-max", e.d_max, minimum=0, optional=True)
        _choice("--protocol", e.protocol, PROTOCOLS)
        _choice("--sampling", e.sampling, SAMPLINGS)
        _positive_int("--n-max", e.n_max)
        _int("--seed", e.seed, minimum=0)
        _choice("--executor", x.executor, EXECUTORS)
        _positive_int("--workers", x.workers)
        _positive("--cpus-per-worker", x.cpus_per_worker)
        if not isinstance(x.gpus_per_worker, (int, float)) or x.gpus_per_worker < 0:
            raise ConfigError("--gpus-per-worker", "a number >= 0", x.gpus_per_worker)
        _positive_int("--max-in-flight", x.max_in_flight, optional=True)
        _positive_int("--threads", x.threads, optional=True)
        _int("--max-retries", x.max_retries, minimum=0)
        if source.needs_path and not source.bundled:
            _check_folder(d.data_path, source)
        if source.tabular and z.threat != "l0":
            raise ConfigError("--threat", "l0 for a table (any field may be changed)", z.threat)
        if z.threat == "append":
            # The data sets hold fixed-length inputs, and the registered models read them so.
            raise ConfigError("--threat", "l0 or suffix: append needs a model that reads a "
                              "trusted part followed by an untrusted slot of --threat-size "
                              "symbols, which the command line's models do not (the demo model "
                              "reads exactly its 10 tokens); certify such a model from Python "
                              "with threat=AppendOnly(m, filler) and "
                              "hybridcert.AppendInput(trusted)", "append")
        entry.check(self, source)
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


def _check_folder(path, source):
    path = path or (os.environ.get(source.env) if source.env else None)
    where = f"--data-path (or ${source.env})" if source.env else "--data-path"
    if not path:
        raise ConfigError(where, f"the folder of {source.name}: {source.layout}")
    if not Path(path).is_dir():
        raise ConfigError(where, f"an existing folder with {source.layout}", str(path))


# --------------------------------------------------------------------------- registries


@dataclass(frozen=True)
class Task:
    """What a data source hands the run: the examples and what the noise needs to know.

    ``split`` holds token ids (``x_discrete``) ready for the engine. A
    bundled data set also gives its ``dataset`` (the demo models train on it);
    text data for a tokenizer-based model give ``raw`` examples instead, which
    the model's entry encodes (see :data:`MODELS`).
    """

    split: Split | None
    num_classes: int
    vocab_size: int | None = None
    arities: tuple[int, ...] | None = None
    dataset: object = None
    raw: list | None = None
    settings: dict = field(default_factory=dict)
    model: object = field(default=None, repr=False)  # a model the data needed loaded already


@dataclass(frozen=True)
class DataSource:
    """A registered data set: how to load it, and what the run must check before loading."""

    name: str
    load: Callable  # load(config: RunConfig) -> Task
    bundled: bool = True
    tabular: bool = False
    needs_path: bool = False
    env: str | None = None
    layout: str = ""
    default_decision: str = "majority"
    help: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model prefix: a static check, the task hook, the builder of the base model."""

    prefix: str
    build: Callable  # build(spec: SmoothedBuilder) -> base classifier
    check: Callable = lambda config, source: None
    prepare: Callable | None = None  # prepare(config, task) -> Task (for example, tokenize)
    help: str = ""


DATA_SOURCES: dict[str, DataSource] = {}
MODELS: dict[str, ModelEntry] = {}


def register_dataset(name: str, load: Callable, **options) -> DataSource:
    """Add a data set under ``name``: ``load(config) -> Task``. Options as :class:`DataSource`."""
    source = DataSource(name, load, **options)
    DATA_SOURCES[name] = source
    return source


def register_model(prefix: str, build: Callable, **options) -> ModelEntry:
    """Add a model prefix (``"demo"`` exactly, or ``"name:"`` before a path or name).

    ``build(spec)`` receives the :class:`SmoothedBuilder` (its ``config`` and
    ``task_info``) and returns a base classifier ``f(tokens, continuous) ->
    labels``. It runs where the model is used: in the local process, or once
    in every Ray worker. A plain callable is allowed too: ``register_model("mine:",
    lambda spec: my_classifier)``.
    """
    entry = ModelEntry(prefix, build, **options)
    MODELS[prefix] = entry
    return entry


def model_entry(model: str) -> ModelEntry:
    """The registry entry of ``--model`` (exact name, or the prefix before its path)."""
    if model in MODELS:
        return MODELS[model]
    if ":" in model and model.split(":", 1)[0] + ":" in MODELS:
        if not model.split(":", 1)[1]:
            raise ConfigError("--model", f"a path or name after {model!r}")
        return MODELS[model.split(":", 1)[0] + ":"]
    names = ", ".join(p + ("PATH" if p.endswith(":") else "") for p in MODELS)
    raise ConfigError("--model", f"one of {names}", model)


def _bundled(name, loader, reads_path=False):
    def load(config: RunConfig) -> Task:
        data = (loader(config.data.data_path, seed=config.estimation.seed) if reads_path
                else loader(seed=config.estimation.seed))
        return Task(split=data.test, num_classes=data.num_classes, vocab_size=data.vocab_size,
                    arities=data.arities, dataset=data)

    return load


def _on_disk(name):
    def load(config: RunConfig) -> Task:
        from .datasets.safety import load_hateful_memes, load_mm_safetybench

        if name == "hateful-memes":
            raw = load_hateful_memes(config.data.data_path, config.data.split)
        else:
            raw = load_mm_safetybench(config.data.data_path)
        return Task(split=None, num_classes=2, raw=raw)

    return load


def _register_defaults() -> None:
    from .datasets.mm_interaction import load as load_mm_interaction
    from .datasets.tabular import load_adult, load_penguins

    register_dataset("mm-interaction", _bundled("mm-interaction", load_mm_interaction),
                     default_decision="threshold",
                     help="bundled text x image task (threshold rule by default)")
    register_dataset("tabular", _bundled("tabular", load_penguins), tabular=True,
                     help="bundled Palmer penguins table")
    register_dataset("adult", _bundled("adult", load_adult, reads_path=True), tabular=True,
                     help="UCI Adult census table, bundled (adult.data trains, adult.test "
                          "tests); --data-path or $HYBRIDCERT_ADULT for your own copy")
    register_dataset("hateful-memes", _on_disk("hateful-memes"), bundled=False, needs_path=True,
                     env="HYBRIDCERT_HATEFUL_MEMES",
                     layout="<split>.jsonl files and the img/ folder they refer to",
                     default_decision="threshold", help="on disk, with --model hf:...")
    register_dataset("mm-safetybench", _on_disk("mm-safetybench"), bundled=False,
                     needs_path=True, env="HYBRIDCERT_MMSAFETYBENCH",
                     layout="data/processed_questions/<scenario>.json and data/imgs/",
                     default_decision="threshold", help="on disk, with --model hf:...")
    register_model("demo", _build_demo, check=_check_demo,
                   help="the bundled model, trained under noise and cached")
    register_model("sklearn:", _build_sklearn, check=_check_sklearn,
                   help="a pickled fitted scikit-learn classifier for a table")
    register_model("hf:", _build_hf, check=_check_hf, prepare=_prepare_hf,
                   help="a Hugging Face image-text-to-text safety guard")


# --------------------------------------------------------------------------- model entries


def _check_demo(config: RunConfig, source: DataSource) -> None:
    if not source.bundled:
        raise ConfigError("--model", f"hf:NAME_OR_PATH for --dataset {source.name}", "demo")


def _build_demo(spec: SmoothedBuilder):
    from .models import demo

    data = spec.load_task().dataset  # the demo model is defined by its training data
    z = spec.config.noise
    cache = spec.config.model.cache_dir
    if data.arities is not None:
        return demo.tabular_model(data, sigma=z.sigma, beta=z.beta,
                                  random_state=spec.config.estimation.seed, cache=cache)
    return demo.mm_interaction_model(data, sigma=z.sigma, beta=z.beta,
                                     random_state=spec.config.estimation.seed, cache=cache,
                                     verbose=True, kernel=z.kernel)


def _check_sklearn(config: RunConfig, source: DataSource) -> None:
    path = Path(config.model.model.split(":", 1)[1]).expanduser()
    if not path.is_file():
        raise ConfigError("--model", "sklearn:PATH of an existing pickled, fitted scikit-learn "
                          "classifier", config.model.model)
    if not source.bundled:
        raise ConfigError("--model", f"hf:NAME_OR_PATH for --dataset {source.name}",
                          config.model.model)


def _build_sklearn(spec: SmoothedBuilder):
    """A table's estimator gets the rows in the form it was fitted on (see ``for_table``)."""
    import pickle

    from .models import SklearnClassifier

    path = Path(spec.config.model.model.split(":", 1)[1]).expanduser()
    try:
        with path.open("rb") as fh:
            estimator = pickle.load(fh)
    except Exception as err:  # a file that is not a pickle of a classifier
        raise ConfigError("--model", f"sklearn:PATH of a pickled, fitted scikit-learn classifier "
                          f"({type(err).__name__}: {err})", str(path)) from err
    if spec.arities is not None:
        return SklearnClassifier.for_table(estimator, spec.load_task().dataset)
    return SklearnClassifier(estimator)


def _check_hf(config: RunConfig, source: DataSource) -> None:
    name = config.model.model.split(":", 1)[1]
    looks_local = name.startswith((".", "/", "~")) or (os.sep in name and Path(name).exists())
    if looks_local and not Path(name).expanduser().is_dir():
        raise ConfigError("--model", "hf:NAME_OR_PATH of a Hugging Face model (a hub name or an "
                          "existing folder with config.json)", config.model.model)
    if source.tabular:
        raise ConfigError("--model", "demo or sklearn:PATH for a table", config.model.model)
    if config.noise.kernel != "uniform" or config.noise.threat != "l0":
        raise ConfigError("--kernel/--threat", "uniform and l0 with an hf: guard",
                          f"{config.noise.kernel}/{config.noise.threat}")


def _prepare_hf(config: RunConfig, task: Task) -> Task:
    """Load the guard once, then tokenize the user texts and load the images at its resolution."""
    from .models.hf import DEFAULT_POLICY, HFSafetyGuard

    m = config.model
    try:
        guard = HFSafetyGuard.from_pretrained(
            m.model.split(":", 1)[1], policy=m.policy or DEFAULT_POLICY, rule=m.hf_rule,
            device=m.device, dtype=m.dtype,
            max_batch_size="auto" if m.batch_size == "auto" else None)
    except OSError as err:
        raise ConfigError("--model", "hf:NAME_OR_PATH of an image-text-to-text model with its "
                          f"processor ({type(err).__name__}: {str(err).splitlines()[0]})",
                          m.model) from err
    # The one resize, on load: the pixel space of the noise and of the L2 radius.
    size = config.data.image_size or guard._processor_image_size()
    if task.raw is not None:
        from .datasets.safety import load_image

        raw = [(e.id, e.text, load_image(e.image_path, size), e.label) for e in task.raw]
    else:  # a bundled text x image set, rendered for the guard
        from PIL import Image

        data = task.dataset

        def rgb(image):
            pil = Image.fromarray((image * 255).astype(np.uint8)).convert("RGB")
            return np.asarray(pil.resize((size, size), Image.BILINEAR), np.float32) / 255.0

        raw = [(i, " ".join(data.vocab[t] for t in toks), rgb(img), int(y))
               for i, toks, img, y in zip(data.test.ids, data.test.x_discrete,
                                          data.test.x_continuous, data.test.y)]
    split = Split(ids=[r[0] for r in raw], x_discrete=[guard.encode_text(r[1]) for r in raw],
                  x_continuous=[r[2] for r in raw], y=np.array([r[3] for r in raw]))
    return Task(split=split, num_classes=2, dataset=None, model=guard,
                settings={"guard": guard.describe(), "image_size": size,
                          "alphabet": guard.alphabet})


def _build_hf(spec: SmoothedBuilder):
    from .models.hf import DEFAULT_POLICY, HFSafetyGuard

    m = spec.config.model
    return HFSafetyGuard.from_pretrained(m.model.split(":", 1)[1],
                                         policy=m.policy or DEFAULT_POLICY, rule=m.hf_rule,
                                         device=m.device, dtype=m.dtype,
                                         max_batch_size="auto" if m.batch_size == "auto" else None)


# --------------------------------------------------------------------------- plan and builder


@dataclass(frozen=True)
class SmoothedBuilder:
    """The picklable recipe of the smoothed classifier of a run (local and Ray executors).

    Calling it builds the base model (its registry entry's ``build``), the
    kernel, the threat region and the smoothed classifier. It holds only the
    configuration and the few facts of the data the noise needs (vocabulary
    size, arities, alphabet), never the examples.
    """

    config: RunConfig
    rule: DecisionRule
    vocab_size: int | None = None
    arities: tuple[int, ...] | None = None
    alphabet: np.ndarray | None = field(default=None, repr=False)
    torch_inputs: bool = False
    build: Callable | None = field(default=None, repr=False)  # the entry's, carried to workers
    loaded: object = field(default=None, repr=False, compare=False)  # never pickled

    def __getstate__(self):
        state = dict(self.__dict__)
        state["loaded"] = None  # a worker loads its own replica
        return state

    def load_task(self) -> Task:
        """The data set (for models defined by their training data, such as the demo ones)."""
        return DATA_SOURCES[self.config.data.dataset].load(self.config)

    def kernel(self):
        from .noise import AbsorbingMask, CategoricalSubstitution, UniformSubstitution

        z = self.config.noise
        if self.arities is not None:
            return CategoricalSubstitution(beta=z.beta, arities=self.arities)
        if self.alphabet is not None:
            return UniformSubstitution(beta=z.beta, alphabet=self.alphabet,
                                       attacker_alphabet=z.attacker_alphabet)
        if z.kernel == "uniform":
            return UniformSubstitution(beta=z.beta, vocab_size=self.vocab_size,
                                       attacker_alphabet=z.attacker_alphabet)
        return AbsorbingMask(beta=z.beta, mask_id=self.vocab_size)

    def threat(self):
        from .noise import AppendOnly, InPlaceSuffix, L0Anywhere

        z = self.config.noise
        if z.threat == "suffix":
            return InPlaceSuffix(z.threat_size)
        if z.threat == "append":  # for a registered model that takes hybridcert.AppendInput
            return AppendOnly(z.threat_size, z.filler)
        return L0Anywhere()

    def __call__(self):
        from .smoothing import SmoothedClassifier

        set_threads(self.config.executor.threads)
        model = self.loaded if self.loaded is not None else \
            (self.build or model_entry(self.config.model.model).build)(self)
        z, batch = self.config.noise, self.config.model.batch_size
        return SmoothedClassifier(
            model, discrete_noise=None if z.baseline == "image-only" else self.kernel(),
            sigma=None if z.baseline == "text-only" else z.sigma, threat=self.threat(),
            decision=self.rule, target_label=self.config.decision.target_label,
            clamp=(0.0, 1.0) if self.alphabet is not None else None,
            batch_size=AUTO_BATCH if batch == "auto" else batch,
            # sequential sampling certifies from one lower bound: lower(A) > 1/2 with > 2 classes
            multiclass_rule="half" if self.config.estimation.sampling == "sequential"
            else "runner_up",
        )


@dataclass(frozen=True)
class Plan:
    """A validated, resolved run: the configuration, the rule, the examples, the builder."""

    config: RunConfig
    rule: DecisionRule
    task: Task
    builder: SmoothedBuilder

    @property
    def split(self) -> Split:
        """The examples, as the engine takes them (image tensors for the torch demo model:
        the Gaussian noise is then drawn by torch, 3x faster). Ray and local get the same."""
        split = self.task.split
        if self.builder.torch_inputs:
            import torch

            split = dataclasses.replace(split, x_continuous=torch.as_tensor(split.x_continuous))
        return split

    def _sampling(self) -> dict:
        """The noise streams and the sampling rule (a resume must match them)."""
        from .streams import STREAM_VERSION

        e = self.config.estimation
        return {"stream": STREAM_VERSION, "sampling": e.sampling,
                "n_max": e.n_max if e.sampling == "sequential" else None}

    def settings(self) -> dict:
        """The content of ``run.json``: every setting that changes a result."""
        c, z, e = self.config, self.config.noise, self.config.estimation
        hf = self.task.settings.get("guard") is not None
        s = {"dataset": c.data.dataset, "model": c.model.model}
        if hf:
            s["guard"] = self.task.settings["guard"]
            s["dtype"] = s["guard"]["dtype"]
        kernel = "categorical" if self.task.arities is not None else z.kernel
        s["kernel"] = kernel
        if hf:
            s["attacker_alphabet"] = z.attacker_alphabet
        s.update({
            "beta": z.beta, "sigma": z.sigma, "decision": self.rule.kind,
            "tau": self.rule.tau, "target_label": self.rule.target_label,
            "n0": e.n0, "n": e.n, "alpha": e.alpha, "d_max": e.d_max, "threat": z.threat,
        })
        if hf:
            s.update({"protocol": e.protocol, "image_size": self.task.settings["image_size"],
                      "batch_size": c.model.batch_size, "seed": e.seed, "num_classes": 2,
                      "hybridcert": __version__, "limit": c.data.limit, **self._sampling()})
            return s
        s["threat_size"] = z.threat_size if z.threat != "l0" else None
        s["filler"] = z.filler if z.threat == "append" else None
        s["attacker_alphabet"] = z.attacker_alphabet if kernel == "uniform" else None
        s.update({"protocol": e.protocol, "batch_size": c.model.batch_size, "seed": e.seed,
                  **self._sampling(), "num_classes": self.task.num_classes, "hybridcert": __version__,
                  "limit": c.data.limit, "baseline": z.baseline})
        return s


def plan(config: RunConfig) -> Plan:
    """Validate ``config``, load its data (no model) and resolve it; raise before any work."""
    config.validate()
    source = DATA_SOURCES[config.data.dataset]
    entry = model_entry(config.model.model)
    task = source.load(config)
    if entry.prepare is not None:
        task = entry.prepare(config, task)
    r = config.decision
    kind = r.decision
    if kind == "auto":
        kind = source.default_decision if entry.prefix != "hf:" else "threshold"
    if entry.prefix == "hf:" and kind != "threshold":
        raise ConfigError("--decision", "threshold (or auto) with an hf: guard", kind)
    if kind == "threshold" and r.target_label >= task.num_classes:
        raise ConfigError("--target-label", f"a label in 0..{task.num_classes - 1}",
                          r.target_label)
    rule = DecisionRule(kind, tau=r.tau if kind == "threshold" else None,
                        target_label=(r.target_label if entry.prefix != "hf:" else 1)
                        if kind == "threshold" else None,
                        num_classes=task.num_classes)
    _check_budget(config, task)
    torch_inputs = entry.prefix == "demo" and task.arities is None
    builder = SmoothedBuilder(config, rule, vocab_size=task.vocab_size, arities=task.arities,
                              alphabet=task.settings.get("alphabet"), torch_inputs=torch_inputs,
                              build=entry.build, loaded=task.model)
    return Plan(config, rule, task, builder)


def _check_budget(config: RunConfig, task: Task) -> None:
    """``d_max`` and the threat region against the examples' attackable positions."""
    z, d_max = config.noise, config.estimation.d_max
    if not len(task.split):
        raise ConfigError("--dataset", "a data set with at least one test example",
                          config.data.dataset)
    lengths = [len(t) for t in task.split.x_discrete]
    shortest = min(lengths)
    if z.threat == "suffix" and z.threat_size > shortest:
        raise ConfigError("--threat-size", f"at most {shortest} (the shortest sequence) with "
                          "--threat suffix", z.threat_size)
    attackable = {"l0": shortest, "suffix": z.threat_size, "append": z.threat_size}[z.threat]
    if z.baseline == "image-only":
        attackable = 0
    if d_max is not None and d_max > attackable:
        raise ConfigError("--d-max", f"at most {attackable}, the attackable positions of the "
                          f"shortest example under --threat {z.threat}", d_max)


def set_threads(threads: int | None) -> int:
    """Size torch's intra-op pool (and BLAS) to the cores this process may use.

    ``None``: the CPUs this process may run on (``os.sched_getaffinity``) minus
    the load already on them, at least 1. Over-subscribed intra-op threads
    wait on one another at every parallel region, so a run on a loaded machine
    slows far beyond its fair share; fitting the pool to the free cores avoids it.
    """
    if threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            (os.cpu_count() or 1)
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
        threads = max(1, min(cores, int(cores - busy + 0.5)))
    try:
        import torch
    except ImportError:
        return threads
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        logger.debug("torch intra-op threads: %d", threads)
    return threads


# --------------------------------------------------------------------------- running a plan


def certify_run(config: RunConfig, *, announce: Callable[[str], None] | None = None) -> Path:
    """Certify the run ``config`` describes (local or Ray) and write its report; the run directory.

    Everything is validated first (:func:`plan`); ``run.json`` and rows are
    written by :func:`hybridcert.runner.certify_split` or its Ray twin.
    """
    from .runner import certify_split

    p = plan(config)
    say = announce or (lambda line: logger.info("%s", line))
    settings = p.settings()
    say("hybridcert certify: " + ", ".join(f"{k}={v}" for k, v in settings.items()
                                           if v is not None))
    out = config.out_dir
    x = config.executor
    common = {"n0": config.estimation.n0, "n": config.estimation.n, "alpha": config.estimation.alpha,
              "d_max": config.estimation.d_max, "protocol": config.estimation.protocol,
              "seed": config.estimation.seed, "limit": config.data.limit, "progress": x.progress,
              "max_retries": x.max_retries, "sampling": config.estimation.sampling,
              "n_max": config.estimation.n_max}
    split = p.split
    say(f"{min(config.data.limit or len(split), len(split))} test examples -> {out}/")
    if x.executor == "ray":
        from .distributed import certify_split_ray

        say(f"executor: ray ({x.ray_address or 'a local instance'}), {x.workers} workers x "
            f"{x.cpus_per_worker} CPU, {x.gpus_per_worker} GPU")
        builder = p.builder
        if x.threads is None:  # an actor's threads fit the CPUs it reserves, not the machine's
            executor = dataclasses.replace(x, threads=max(1, int(x.cpus_per_worker)))
            builder = dataclasses.replace(builder, config=dataclasses.replace(
                config, executor=executor))
        certify_split_ray(builder, split, out, settings, address=x.ray_address,
                          workers=x.workers, cpus_per_worker=x.cpus_per_worker,
                          gpus_per_worker=x.gpus_per_worker, max_in_flight=x.max_in_flight,
                          **common)
    else:
        smoothed = p.builder()
        certify_split(smoothed, split, out, settings, **common)
        forward = getattr(smoothed.base_classifier, "forward_batch_size", None)
        if config.model.batch_size == "auto" and forward:
            say(f"forward batch size settled at {forward} (recorded in each row's "
                "settings.base_classifier)")
    return out


_register_defaults()
