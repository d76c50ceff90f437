"""Registries of data sets and models: what ``--dataset`` and ``--model`` can name.

:data:`DATA_SOURCES` maps ``--dataset`` names to loaders and :data:`MODELS`
maps ``--model`` prefixes to builders; :func:`register_dataset` and
:func:`register_model` add your own, and the command line offers what they
hold. :func:`check_config` checks a :class:`~hybridcert.config.RunConfig`
against them (before any data or model is loaded).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ConfigError, RunConfig
from .datasets.base import Split
from .identity import file_sha256, hf_weights_identity, model_fingerprint, split_sha256, tree_sha256

__all__ = ["DATA_SOURCES", "MODELS", "DataSource", "ModelEntry", "Task", "check_config",
           "data_identity", "model_entry", "model_identity", "register_dataset",
           "register_model"]


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
    denoiser: object = field(default=None, repr=False)  # --denoiser, loaded with the guard


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
    options: tuple[str, ...] = ()  # the DataConfig options it reads (split, columns, ...)
    reads_path: bool = False  # reads --data-path although it needs none (a bundled default)


DATA_OPTIONS = ("split", "text_column", "image_column", "label_column", "filter_column",
                "constant_label")  # read only by the sources that list them in `options`
MODEL_OPTIONS = ("policy", "hf_rule", "hf_task", "hf_flagged", "device", "dtype", "image_size",
                 "cache_dir")  # read only by the models that list them in `options`


@dataclass(frozen=True)
class ModelEntry:
    """A registered model prefix: a static check, the task hook, the builder of the base model."""

    prefix: str
    build: Callable  # build(spec: SmoothedBuilder) -> base classifier
    check: Callable = lambda config, source: None
    prepare: Callable | None = None  # prepare(config, task) -> Task (for example, tokenize)
    help: str = ""
    # fingerprint(config, task) -> dict: the model's identity for run.json, without building it
    fingerprint: Callable | None = None
    # The MODEL_OPTIONS it reads; None: not declared (a model registered from Python may read
    # any of them), so none is refused.
    options: tuple[str, ...] | None = None


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
        identity = {"source": name, "sha256": split_sha256(data.test)}
        path = config.data.data_path or (os.environ.get("HYBRIDCERT_ADULT") if reads_path
                                         else None)
        if path:  # your own copy: its path too (the hash says whether its contents changed)
            identity["path"] = str(Path(path).expanduser().resolve())
        return Task(split=data.test, num_classes=data.num_classes, vocab_size=data.vocab_size,
                    arities=data.arities, dataset=data, settings={"data": identity})

    return load


def _on_disk(name):
    def load(config: RunConfig) -> Task:
        from .datasets.safety import load_hateful_memes, load_mm_safetybench

        d = config.data
        identity = _identity(config)
        if name == "hateful-memes":  # the loaders' own defaults where an option is None
            raw = load_hateful_memes(d.data_path, **({"split": d.split} if d.split else {}))
            # the split read, named (the default is the same split as its name)
            identity["split"] = d.split or inspect.signature(
                load_hateful_memes).parameters["split"].default
        else:
            raw = load_mm_safetybench(d.data_path, text_field=d.text_column)
        return Task(split=None, num_classes=2, raw=raw,
                    settings={"data": {**identity, "sha256": _raw_sha256(raw)}})

    return load


def _load_hf_disk(config: RunConfig) -> Task:
    from .datasets.hf_disk import load_hf_disk

    d = config.data
    image = d.image_column or "image"
    read = {"split": d.split, "text": d.text_column or "text",
            "image": None if image == "none" else image,
            "label": None if d.constant_label is not None else d.label_column or "label",
            "filter": d.filter_column, "constant_label": d.constant_label}
    raw = load_hf_disk(d.data_path, **read, limit=d.limit)
    root = Path(d.data_path).expanduser().resolve()
    # The files of the split (the rows read stop at --limit, which may change between runs).
    files = root / d.split if d.split and (root / d.split).is_dir() else root
    return Task(split=None, num_classes=2, raw=raw,
                settings={"data": {"source": "hf-disk", "path": str(root), **read,
                                   "sha256": tree_sha256(files)}})


def _identity(config: RunConfig) -> dict:
    """The data identity a run records: the source, its folder and the options it reads (None:
    the loader's default)."""
    source = DATA_SOURCES[config.data.dataset]
    path = config.data.data_path or (os.environ.get(source.env) if source.env else None)
    return {"source": source.name, "path": str(Path(path).expanduser().resolve()),
            **{name: getattr(config.data, name) for name in source.options}}


def _raw_sha256(raw: list) -> str:
    """The hash of raw examples: ids, texts, labels, and each image file's bytes (or the
    in-memory picture's pixels)."""
    images = [file_sha256(e.image_path) if e.image_path is not None
              else None if e.image is None else np.asarray(e.image) for e in raw]
    return split_sha256(Split(ids=[e.id for e in raw], x_discrete=[e.text for e in raw],
                              x_continuous=images, y=[e.label for e in raw]))


def data_identity(config: RunConfig, task: Task) -> dict:
    """``run.json``'s ``data``: the source, path and options, and a SHA-256 of the examples
    (:func:`~hybridcert.identity.split_sha256` of the whole split, so ``--limit`` may change)."""
    if "data" in task.settings:
        return task.settings["data"]
    return {"source": config.data.dataset, "sha256": split_sha256(task.split)}


def model_identity(config: RunConfig, task: Task) -> dict:
    """``run.json``'s ``model_fingerprint``: the registry entry's, else the loaded model's
    (:func:`~hybridcert.identity.model_fingerprint`), else the name given (``exact`` False)."""
    entry = model_entry(config.model.model)
    if entry.fingerprint is not None:
        return entry.fingerprint(config, task)
    if task.model is not None:
        return model_fingerprint(task.model)
    return {"kind": "registered", "name": config.model.model, "exact": False}


def _register_defaults() -> None:
    from .datasets.mm_interaction import load as load_mm_interaction
    from .datasets.tabular import load_adult, load_penguins

    register_dataset("mm-interaction", _bundled("mm-interaction", load_mm_interaction),
                     default_decision="threshold",
                     help="bundled text x image task (threshold rule by default)")
    register_dataset("tabular", _bundled("tabular", load_penguins), tabular=True,
                     help="bundled Palmer penguins table")
    register_dataset("adult", _bundled("adult", load_adult, reads_path=True), tabular=True,
                     reads_path=True,
                     help="UCI Adult census table, bundled (adult.data trains, adult.test "
                          "tests); --data-path or $HYBRIDCERT_ADULT for your own copy")
    register_dataset("hateful-memes", _on_disk("hateful-memes"), bundled=False, needs_path=True,
                     env="HYBRIDCERT_HATEFUL_MEMES",
                     layout="<split>.jsonl files and the img/ folder they refer to",
                     default_decision="threshold", options=("split",),
                     help="on disk, with --model hf:...")
    register_dataset("mm-safetybench", _on_disk("mm-safetybench"), bundled=False,
                     needs_path=True, env="HYBRIDCERT_MMSAFETYBENCH",
                     layout="data/processed_questions/<scenario>.json and data/imgs/",
                     default_decision="threshold", options=("text_column",),
                     help="on disk, with --model hf:...")
    register_dataset("hf-disk", _load_hf_disk, bundled=False, needs_path=True,
                     layout="a Dataset or DatasetDict saved with save_to_disk",
                     default_decision="threshold", options=DATA_OPTIONS,
                     help="a Hugging Face data set saved with save_to_disk (hybridcert[datasets]), "
                          "with --model hf:...")
    register_model("demo", _build_demo, check=_check_demo, fingerprint=_fingerprint_demo,
                   options=("cache_dir",),
                   help="the bundled model, trained under noise and cached")
    register_model("sklearn:", _build_sklearn, check=_check_sklearn,
                   fingerprint=_fingerprint_sklearn, options=(),
                   help="a pickled fitted scikit-learn classifier for a table")
    register_model("hf:", _build_hf, check=_check_hf, prepare=_prepare_hf,
                   fingerprint=_fingerprint_hf,
                   options=tuple(o for o in MODEL_OPTIONS if o != "cache_dir"),
                   help="a Hugging Face safety guard: a VLM or a causal LM answering "
                        "safe/unsafe, or a sequence classifier (--hf-task)")



def check_config(config: RunConfig) -> RunConfig:
    """Check ``config`` against the registries: data set, model, their own checks, and the
    options the run reads (:func:`check_run_options`)."""
    d, z = config.data, config.noise
    source = DATA_SOURCES.get(d.dataset)
    if source is None:
        raise ConfigError("--dataset", f"one of {', '.join(DATA_SOURCES)}", d.dataset)
    entry = model_entry(config.model.model)
    if source.needs_path and not source.bundled:
        _check_folder(d.data_path, source)
    if source.tabular and z.threat != "l0":
        raise ConfigError("--threat", "l0 for a table (any field may be changed)", z.threat)
    entry.check(config, source)
    check_run_options(config, source, entry)
    return config


# --------------------------------------------------------------------------- options a run reads

EXECUTOR_OPTIONS = ("ray_address", "workers", "cpus_per_worker", "gpus_per_worker",
                    "max_in_flight")  # read only by --executor ray
DEVICES = "cpu, cuda, cuda:N or mps"


def check_run_options(config: RunConfig, source: DataSource, entry: ModelEntry) -> None:
    """Refuse an option this run would not read, or could not honour, before any work.

    An option counts as given when it differs from its field's default, so
    the check is the same from Python and from the command line. Refused: the
    data options the source does not list (:attr:`DataSource.options`,
    ``--data-path`` unless it reads one), the model options the model entry
    does not list (:attr:`ModelEntry.options`; ``--cache-dir`` is named only
    when nothing else is wrong), ``--tau`` and ``--target-label`` under the
    majority rule, the kernel options of a table (always categorical
    substitution), ``--threat-size`` and ``--filler`` where the threat region
    reads none, ``--beta`` and ``--sigma`` where the baseline draws no such
    noise, Ray's options under the local executor, ``--threads``
    beyond this machine's CPUs, a ``--device`` this torch cannot use (or a
    ``--dtype`` it cannot run there), and an ``--out`` that is not a folder.

    Raises
    ------
    ConfigError
        Naming the first such option, why it is refused and what is accepted.
    """
    d, m, z, x = config.data, config.model, config.noise, config.executor
    for name in DATA_OPTIONS:
        if _given(d, name) and name not in source.options:
            takers = [s.name for s in DATA_SOURCES.values() if name in s.options]
            raise ConfigError(_flag(name), f"no value with --dataset {source.name} (read by "
                              f"{', '.join(takers)})", getattr(d, name))
    if _given(d, "data_path") and not (source.needs_path or source.reads_path):
        takers = [s.name for s in DATA_SOURCES.values() if s.needs_path or s.reads_path]
        raise ConfigError("--data-path", f"no value with --dataset {source.name}, which is "
                          f"bundled and reads no path (read by {', '.join(takers)})", d.data_path)
    unread = [name for name in MODEL_OPTIONS if entry.options is not None
              and _given(d if name == "image_size" else m, name) and name not in entry.options]
    for name in unread:
        if name != "cache_dir":  # named last: a harmless leftover, unlike the other mistakes
            _refuse_model_option(name, config)
    if resolved_decision(config, source, entry) == "majority":
        why = ("--decision majority" if config.decision.decision == "majority" else
               f"--decision auto with --dataset {source.name}")
        for name in ("tau", "target_label"):
            if _given(config.decision, name):
                raise ConfigError(_flag(name), f"no value under the majority rule ({why}); read "
                                  "by --decision threshold", getattr(config.decision, name))
    if source.tabular:
        for name in ("kernel", "attacker_alphabet"):
            if _given(z, name):
                raise ConfigError(_flag(name), f"no value with --dataset {source.name}: a table's "
                                  "fields always get categorical substitution over their own "
                                  "categories", getattr(z, name))
    # Noise options the threat region or the baseline does not read.
    for name, unused, why in (
            ("threat_size", z.threat == "l0", "--threat l0 (read by --threat suffix or append)"),
            ("filler", z.threat != "append", f"--threat {z.threat} (read by --threat append)"),
            ("beta", z.baseline == "image-only", "--baseline image-only (no token noise)"),
            ("sigma", z.baseline == "text-only", "--baseline text-only (no Gaussian noise)")):
        if unused and _given(z, name):
            raise ConfigError(_flag(name), f"no value with {why}", getattr(z, name))
    if x.executor != "ray":
        for name in EXECUTOR_OPTIONS:
            if _given(x, name):
                raise ConfigError(_flag(name), "no value with --executor local (read by "
                                  "--executor ray)", getattr(x, name))
    if x.threads is not None and (x.executor == "local" or x.ray_address is None):
        # Intra-op threads beyond the cores only wait on one another at every parallel region.
        cpus = os.cpu_count() or 1
        if x.threads > cpus:
            raise ConfigError("--threads", f"at most {cpus}, the CPUs of this machine (more "
                              "torch threads than cores slow a run down; leave it out to fit "
                              "the free cores)", x.threads)
    if "device" in (entry.options or ()):
        _check_device(m.device, m.dtype)
    out = config.out_dir
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        where = "that is a file" if blocking == out else f"below the file {blocking}"
        raise ConfigError("--out", f"a folder for the run (new, or a run's to resume), not a path "
                          f"{where}", str(out))
    if unread:
        _refuse_model_option(unread[0], config)


def _refuse_model_option(name: str, config: RunConfig) -> None:
    value = getattr(config.data if name == "image_size" else config.model, name)
    takers = [e.prefix for e in MODELS.values() if name in (e.options or ())]
    raise ConfigError(_flag(name), f"no value with --model {config.model.model} (read by "
                      f"{', '.join(takers) or 'no registered model'})", value)


def resolved_decision(config: RunConfig, source: DataSource, entry: ModelEntry) -> str:
    """The rule ``--decision`` names; ``auto``: threshold for hf: guards, else the data set's."""
    kind = config.decision.decision
    if kind == "auto":
        kind = source.default_decision if entry.prefix != "hf:" else "threshold"
    return kind


def _given(group, name: str) -> bool:
    """Whether ``group.name`` differs from the field's default (an option the run was given)."""
    field_ = next(f for f in dataclasses.fields(group) if f.name == name)
    default = field_.default_factory() if field_.default is dataclasses.MISSING else field_.default
    return getattr(group, name) != default


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_device(device, dtype) -> None:
    """``--device`` names a device this torch can use, and ``--dtype`` runs there."""
    try:
        import torch
    except ImportError:  # the hf: loader reports the missing extra
        return
    from .models.hf import resolve_dtype

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError("--device", DEVICES, device) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            seen = (f"sees {count} CUDA device(s)" if count else
                    f"sees no CUDA device (version {torch.__version__}"
                    + (", a CPU-only build: install a CUDA build of torch, see README.md"
                       if torch.version.cuda is None else "") + ")")
            raise ConfigError("--device", f"a device this machine has: torch {seen}", device)
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("--device", "a device this machine has: torch sees no MPS "
                              "device", device)
    elif parsed.type != "cpu":
        raise ConfigError("--device", DEVICES, device)
    try:
        resolve_dtype(dtype, str(parsed))
    except ValueError as err:
        raise ConfigError("--dtype", f"a precision the device runs ({err})", dtype) from None


def _check_folder(path, source):
    path = path or (os.environ.get(source.env) if source.env else None)
    where = f"--data-path (or ${source.env})" if source.env else "--data-path"
    if not path:
        raise ConfigError(where, f"the folder of {source.name}: {source.layout}")
    if not Path(path).is_dir():
        raise ConfigError(where, f"an existing folder with {source.layout}", str(path))


# --------------------------------------------------------------------------- model entries


def _check_demo(config: RunConfig, source: DataSource) -> None:
    if not source.bundled:
        raise ConfigError("--model", f"hf:NAME_OR_PATH for --dataset {source.name}", "demo")


def _demo_options(config: RunConfig, data) -> dict:
    """The demo model's training options (its cache key follows them)."""
    z = config.noise
    options = {"sigma": z.sigma, "beta": z.beta, "random_state": config.estimation.seed}
    return options if data.arities is not None else {**options, "kernel": z.kernel}


def _build_demo(spec):
    from .models import demo

    data = spec.load_task().dataset  # the demo model is defined by its training data
    cache = spec.config.model.cache_dir
    if data.arities is not None:
        return demo.tabular_model(data, **_demo_options(spec.config, data), cache=cache)
    return demo.mm_interaction_model(data, **_demo_options(spec.config, data), cache=cache,
                                     verbose=True)


def _fingerprint_demo(config: RunConfig, task: Task) -> dict:
    """The demo model's cache key: its training data, options and library versions."""
    from .models import demo

    data = task.dataset
    if data is None:  # a registered source without a training set: nothing to key on
        return {"kind": "demo", "cache_key": None, "exact": False}
    key = (demo.tabular_key if data.arities is not None else demo.mm_interaction_key)(
        data, **_demo_options(config, data))
    return {"kind": "demo", "cache_key": key, "exact": True}


def _fingerprint_sklearn(config: RunConfig, task: Task) -> dict:
    path = Path(config.model.model.split(":", 1)[1]).expanduser().resolve()
    return {"kind": "sklearn", "path": str(path), "sha256": file_sha256(path), "exact": True}


def _fingerprint_hf(config: RunConfig, task: Task) -> dict:
    """The guard's name, then where its weights come from (the guard is loaded by the plan
    already, to tokenize the data): path, revision (commit hash), config hash and a local
    folder's weights hash. Exact with a commit hash or a full hash of the weights."""
    name = config.model.model.split(":", 1)[1]
    weights = hf_weights_identity(task.model.model) if task.model is not None else {}
    return {"kind": "hf", "name": name, **weights,
            "exact": weights.get("revision") is not None or bool(weights.get("weights_exact"))}


def _check_sklearn(config: RunConfig, source: DataSource) -> None:
    path = Path(config.model.model.split(":", 1)[1]).expanduser()
    if not path.is_file():
        raise ConfigError("--model", "sklearn:PATH of an existing pickled, fitted scikit-learn "
                          "classifier", config.model.model)
    if not source.bundled:
        raise ConfigError("--model", f"hf:NAME_OR_PATH for --dataset {source.name}",
                          config.model.model)


def _build_sklearn(spec):
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
    m, z = config.model, config.noise
    if z.kernel != "uniform":
        raise ConfigError("--kernel", "uniform with an hf: guard", z.kernel)
    if m.hf_task == "image-text-to-text":  # with auto, checked once the guard's kind is known
        _check_hf_image_guard(config)
    size = config.data.image_size
    if m.hf_task in ("text-generation", "text-classification") and size is not None:
        raise ConfigError("--image-size", f"no value with --hf-task {m.hf_task} (a text guard "
                          "reads no image)", size)
    if m.hf_task == "text-classification":
        for name in ("policy", "hf_rule"):
            if _given(m, name):
                raise ConfigError(_flag(name), "no value with --hf-task text-classification (it "
                                  "applies to chat guards)", getattr(m, name))
    if m.hf_flagged is not None and m.hf_task not in ("auto", "text-classification"):
        raise ConfigError("--hf-flagged", "no flagged labels with --hf-task "
                          f"{m.hf_task} (they name a text-classification guard's labels)",
                          m.hf_flagged)


def _check_hf_image_guard(config: RunConfig) -> None:
    if config.noise.threat != "l0":
        raise ConfigError("--threat", "l0 with an image-text-to-text hf: guard (suffix and "
                          "append apply to text-only guards)", config.noise.threat)


def _load_hf_guard(config: RunConfig):
    """The guard ``--model hf:...`` names, of the kind ``--hf-task`` gives or its config says."""
    from .models.hf import load_guard

    m = config.model
    try:
        return load_guard(m.model.split(":", 1)[1], task=m.hf_task, policy=m.policy,
                          rule=m.hf_rule, flagged=m.hf_flagged, device=m.device, dtype=m.dtype,
                          max_batch_size="auto" if config.estimation.batch_size == "auto" else None)
    except OSError as err:
        raise ConfigError("--model", "hf:NAME_OR_PATH of a Hugging Face guard with its processor "
                          f"or tokenizer ({type(err).__name__}: {str(err).splitlines()[0]})",
                          m.model) from err


def _hf_examples(task: Task) -> list[tuple]:
    """``(id, user text, image, label)`` of each example; the image is a file's path, or an
    array in [0, 1] for a bundled text x image set (its tokens rendered as words)."""
    if task.raw is not None:
        return [(e.id, e.text, e.image_source, e.label) for e in task.raw]
    data = task.dataset
    return [(i, " ".join(data.vocab[t] for t in toks), img, int(y))
            for i, toks, img, y in zip(data.test.ids, data.test.x_discrete,
                                       data.test.x_continuous, data.test.y)]


def _prepare_hf(config: RunConfig, task: Task) -> Task:
    """Load the guard once, then tokenize the user texts (and, for a VLM guard, load the
    images at its resolution)."""
    examples = _hf_examples(task)
    if config.model.hf_task == "image-text-to-text":  # refused before the guard loads
        _check_images(config, examples)
    guard = _load_hf_guard(config)
    if not guard.continuous:
        return _prepare_hf_text(config, guard, examples, task.settings)
    _check_hf_image_guard(config)
    _check_images(config, examples)
    # The one resize, on load: the pixel space of the noise and of the L2 radius.
    size = config.data.image_size or guard._processor_image_size()
    from PIL import Image

    from .datasets.safety import load_image

    def rgb(image):
        if not isinstance(image, np.ndarray):
            return load_image(image, size)
        pil = Image.fromarray((image * 255).astype(np.uint8)).convert("RGB")
        return np.asarray(pil.resize((size, size), Image.BILINEAR), np.float32) / 255.0

    split = Split(ids=[r[0] for r in examples], x_discrete=[guard.encode_text(r[1])
                                                             for r in examples],
                  x_continuous=[rgb(r[2]) for r in examples],
                  y=np.array([r[3] for r in examples]))
    denoiser = None
    if config.noise.denoiser is not None:
        denoiser = load_run_denoiser(config, guard)
    return Task(split=split, num_classes=2, dataset=None, model=guard, denoiser=denoiser,
                settings={**task.settings, "guard": guard.describe(), "image_size": size,
                          "alphabet": guard.alphabet,
                          "denoiser": None if denoiser is None else denoiser.describe()})


def load_run_denoiser(config: RunConfig, guard=None):
    """The ``--denoiser`` of a run, on the guard's device (a ConfigError if it cannot load)."""
    from .denoisers import load_denoiser

    z, m = config.noise, config.model
    device = getattr(guard, "device", None) or m.device
    try:
        return load_denoiser(z.denoiser, sigma=z.sigma, device=device)
    except (OSError, ValueError, ImportError) as err:
        raise ConfigError("--denoiser", "diffusers:PATH_OR_NAME of a UNet2DModel with its "
                          f"DDPMScheduler ({type(err).__name__}: {str(err).splitlines()[0]})",
                          z.denoiser) from err


def _check_images(config: RunConfig, examples: list[tuple]) -> None:
    if any(r[2] is None for r in examples):
        raise ConfigError("--image-column", "an image for every example: an hf: image-text "
                          "guard reads one", config.data.image_column)


def _prepare_hf_text(config: RunConfig, guard, examples: list[tuple], settings: dict) -> Task:
    """A text-only guard: the user texts alone (no images, so sigma is None); under the
    append threat each text is the trusted part of an ``AppendInput``, the slot follows."""
    from .noise import AppendInput

    z = config.noise
    if z.denoiser is not None:
        raise ConfigError("--denoiser", "an image guard (a text-only guard reads no image)",
                          z.denoiser)
    if config.data.image_size is not None:
        raise ConfigError("--image-size", "no value with a text-only guard (it reads no image)",
                          config.data.image_size)
    if _given(config.model, "hf_rule") and guard.describe().get("task") == "text-classification":
        raise ConfigError("--hf-rule", "no value with a text-classification guard (it applies "
                          "to chat guards)", config.model.hf_rule)
    if z.baseline == "image-only":
        raise ConfigError("--baseline", "none or text-only with a text-only hf: guard (it reads "
                          "no image)", z.baseline)
    tokens = [guard.encode_text(r[1]) for r in examples]
    if z.threat == "append":
        if not 0 <= z.filler < len(guard.tokenizer):
            raise ConfigError("--filler", "a token id of the guard's tokenizer, in 0.."
                              f"{len(guard.tokenizer) - 1}", z.filler)
        room = guard.max_user_tokens
        if room is not None and tokens and max(t.size for t in tokens) + z.threat_size > room:
            raise ConfigError("--threat-size", f"at most {room - max(t.size for t in tokens)}: "
                              f"the longest user text and the slot must fit the model's {room} "
                              "positions beside the template", z.threat_size)
        tokens = [AppendInput(t) for t in tokens]
    split = Split(ids=[r[0] for r in examples], x_discrete=tokens,
                  x_continuous=[None] * len(examples), y=np.array([r[3] for r in examples]))
    return Task(split=split, num_classes=2, dataset=None, model=guard,
                settings={**settings, "guard": guard.describe(), "image_size": None,
                          "alphabet": guard.alphabet, "continuous": False})


def _build_hf(spec):
    return _load_hf_guard(spec.config)


_register_defaults()
