"""The paper's experiments, apart from the library: ``hybridcert experiment paper|adult``.

- :mod:`hybridcert.experiments.paper`: hybrid versus unimodal smoothing, beta and
  sigma ablations, an MMCert-style ablation and the joint attack, on the
  bundled multimodal demo (``paper_experiment``).
- :mod:`hybridcert.experiments.adult`: the tabular experiment on UCI Adult
  (``adult_experiment``).

Both check every argument before any work and write only numbers computed by
the run. Nothing in the library imports this package.
"""
