"""The release workflow: content tags, registry plans, test-then-publish, pins and lint.

``llbgen tag``, ``plan``, ``publish``, ``pin``, ``lint`` and ``sources push`` (wired in
``llbgen.cli`` through :mod:`llbgen.release.cli`). Builds and structure tests go through
``llbgen.client.run.build`` and ``llbgen.structure.runner.run_tests``; registries are spoken to
directly (:mod:`llbgen.release.registry`) with the credentials builds use.
"""
