"""Plan and run a certification: resolve a validated configuration, build the smoothed classifier.

:func:`plan` validates a :class:`~hybridcert.config.RunConfig` (its own
checks, then :func:`~hybridcert.registries.check_config`), loads the data
(never the model), checks what depends on it (``d_max`` against the
attackable positions, the append threat against the model's input length),
and resolves once what ``auto`` left open: the decision rule (a
:class:`~hybridcert.decision.DecisionRule`), tau and the target label.
:meth:`Plan.settings` produces ``run.json`` for ``hybridcert certify``,
from the same record (:class:`~hybridcert.runsettings.RunSettings`) as
:func:`~hybridcert.runner.certify_dataset` writes; the run directory checks
or records it.
:class:`SmoothedBuilder` is the one picklable recipe for the smoothed
classifier: the local executor calls it once, every Ray worker calls it once,
and the Ray driver never does. :func:`certify_run` runs a plan (local or Ray).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ConfigError, RunConfig
from .datasets.base import Split
from .decision import DecisionRule
from .registries import (
    DATA_SOURCES,
    Task,
    check_config,
    data_identity,
    model_entry,
    model_identity,
    resolved_decision,
)
from .rundir import check_run_dir
from .runsettings import RunSettings
from .smoothing import engine_batch
from .spec import AUTO_BATCH

logger = logging.getLogger(__name__)

__all__ = ["Plan", "SmoothedBuilder", "certify_run", "plan", "set_threads"]


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
    continuous: bool = True  # False: no continuous input (an hf: text guard), so sigma is None
    build: Callable | None = field(default=None, repr=False)  # the entry's, carried to workers
    loaded: object = field(default=None, repr=False, compare=False)  # never pickled
    denoiser: object = field(default=None, repr=False, compare=False)  # never pickled
    task: Task | None = field(default=None, repr=False, compare=False)  # never pickled

    def __getstate__(self):
        state = dict(self.__dict__)
        # a worker loads its own replicas (and its own data, where the model needs it)
        state["loaded"] = state["denoiser"] = state["task"] = None
        return state

    def load_task(self) -> Task:
        """The data set (for models defined by their training data, such as the demo ones)."""
        if self.task is not None:  # the plan's, in the process that made the plan
            return self.task
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
        set_threads(self.config.executor.threads)
        model = self.loaded if self.loaded is not None else \
            (self.build or model_entry(self.config.model.model).build)(self)
        denoiser = self.denoiser
        if denoiser is None and self.config.noise.denoiser is not None:
            from .registries import load_run_denoiser

            denoiser = load_run_denoiser(self.config, model)
        return self.smoothed(model, denoiser)

    def smoothed(self, model, denoiser=None):
        """The smoothed classifier of ``model`` (the one recipe; :meth:`__call__` builds the model)."""
        from .smoothing import SmoothedClassifier

        z, spec = self.config.noise, self.config.estimation
        return SmoothedClassifier(
            model, discrete_noise=None if z.baseline == "image-only" else self.kernel(),
            sigma=None if z.baseline == "text-only" or not self.continuous else z.sigma,
            threat=self.threat(),
            decision=self.rule, target_label=self.config.decision.target_label,
            # A diffusion denoiser expects the Gaussian tails a clamp would cut; it clamps its
            # own output to [0, 1].
            clamp=(0.0, 1.0) if self.alphabet is not None and denoiser is None else None,
            denoiser=denoiser,
            batch_size=engine_batch(spec.batch_size, AUTO_BATCH),
            # sequential sampling certifies from one lower bound: lower(A) > 1/2 with > 2 classes
            multiclass_rule="half" if spec.resolved_sampling == "sequential" else "runner_up",
            on_model_error=self.config.model.on_model_error,
            max_error_rate=self.config.model.max_error_rate,
        )

    def classifier_settings(self) -> dict:
        """The smoothed classifier's settings (as its certificates record them), with no model
        built: the recipe applied to a placeholder."""
        return self.smoothed(_unbuilt, self.denoiser).settings_for(self.config.estimation)


def _unbuilt(tokens, continuous):
    raise RuntimeError("the placeholder of a model that is not built was called")


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

    def record(self) -> RunSettings:
        """The run's settings record (:class:`~hybridcert.runsettings.RunSettings`)."""
        c, t = self.config, self.task.settings
        return RunSettings(dataset=c.data.dataset, model=c.model.model,
                           data=data_identity(c, self.task),
                           model_fingerprint=model_identity(c, self.task),
                           guard=t.get("guard"), image_size=t.get("image_size"),
                           classifier=self.builder.classifier_settings(),
                           estimation=c.estimation, limit=c.data.limit)

    def settings(self) -> dict:
        """The content of ``run.json``: every setting that changes a result."""
        return self.record().to_json()


def plan(config: RunConfig) -> Plan:
    """Validate ``config``, load its data (no model) and resolve it; raise before any work."""
    check_config(config.validate())
    source = DATA_SOURCES[config.data.dataset]
    entry = model_entry(config.model.model)
    task = source.load(config)
    if entry.prepare is not None:
        task = entry.prepare(config, task)
    r = config.decision
    kind = resolved_decision(config, source, entry)
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
                              build=entry.build, loaded=task.model, denoiser=task.denoiser,
                              continuous=task.settings.get("continuous", True), task=task)
    return Plan(config, rule, task, builder)


def _check_budget(config: RunConfig, task: Task) -> None:
    """``d_max`` and the threat region against the examples' attackable positions."""
    z, d_max = config.noise, config.estimation.d_max
    if not len(task.split):
        raise ConfigError("--dataset", "a data set with at least one test example",
                          config.data.dataset)
    lengths = [len(getattr(t, "trusted", t)) for t in task.split.x_discrete]  # AppendInput
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


def _brief(value) -> str:
    """A setting on the announce line: a described component as ``name(key=value, ...)``."""
    if not isinstance(value, dict):
        return str(value)
    items = [f"{k}={v}" for k, v in value.items() if v is not None and not isinstance(v, dict)]
    return "(" + ", ".join(items) + ")"


def _size_line(config: RunConfig, split_size: int) -> str:
    """How many examples the run certifies and roughly what that costs, said before it starts."""
    e, out = config.estimation, config.out_dir
    count = min(config.data.limit or split_size, split_size)
    what = (f"the first {count:,} of {split_size:,} test examples" if count < split_size else
            f"all {count:,} test examples" + ("" if config.data.limit or count <= 100 else
                                             " (--limit N certifies the first N)"))
    if e.resolved_sampling == "sequential":
        cost = (f"up to n_max = {e.resolved_n_max:,} model calls each (sequential sampling may stop "
                "earlier)")
    else:
        cost = f"at least n = {e.n:,} model calls each ({count * e.n:,} or more in all)"
    return f"certifying {what} -> {out}/: {cost}"



def certify_run(config: RunConfig, *, announce: Callable[[str], None] | None = None) -> Path:
    """Certify the run ``config`` describes (local or Ray) and write its report; the run directory.

    Everything is validated first (:func:`plan`); ``run.json`` and rows are
    written by :func:`hybridcert.runner.certify_split` or its Ray twin.
    """
    from .runner import certify_split

    p = plan(config)
    say = announce or (lambda line: logger.info("%s", line))
    settings = p.settings()
    say("hybridcert certify: " + ", ".join(
        f"{k}={_brief(v)}" for k, v in settings.items()
        if v is not None and k not in ("data", "model_fingerprint", "guard")))  # identity: run.json
    out = config.out_dir
    x = config.executor
    # A resume with other settings is refused now, before the model is built or trained.
    check_run_dir(out, settings)
    split = p.split
    say(_size_line(config, len(split)))
    if x.executor == "ray":
        from .distributed import certify_split_ray

        say(f"executor: ray ({x.ray_address or 'a local instance'}), {x.workers} workers x "
            f"{x.cpus_per_worker} CPU, {x.gpus_per_worker} GPU")
        builder = p.builder
        if x.threads is None:  # an actor's threads fit the CPUs it reserves, not the machine's
            executor = dataclasses.replace(x, threads=max(1, int(x.cpus_per_worker)))
            builder = dataclasses.replace(builder, config=dataclasses.replace(
                config, executor=executor))
        certify_split_ray(builder, split, out, settings, config.estimation,
                          limit=config.data.limit, progress=x.progress,
                          max_retries=x.max_retries, address=x.ray_address,
                          workers=x.workers, cpus_per_worker=x.cpus_per_worker,
                          gpus_per_worker=x.gpus_per_worker, max_in_flight=x.max_in_flight)
    else:
        smoothed = p.builder()
        certify_split(smoothed, split, out, settings, config.estimation,
                      limit=config.data.limit, progress=x.progress, max_retries=x.max_retries)
        forward = getattr(smoothed.base_classifier, "forward_batch_size", None)
        if config.estimation.batch_size == "auto" and forward:
            say(f"forward batch size settled at {forward} (recorded in each row's "
                "settings.base_classifier)")
    return out

