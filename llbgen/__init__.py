"""llbgen: container image builds written as Python functions, compiled to BuildKit LLB.

Everything an image definition needs is importable from here::

    import llbgen

    def build(ctx: llbgen.BuildContext) -> llbgen.State:
        base = llbgen.image("debian:trixie@sha256:...", platform=ctx.build_platform)
        return base.run("make", mounts=[llbgen.bind("/src", llbgen.local("context"))]).root
"""

from llbgen.llb import *  # noqa: F403
from llbgen.llb import __all__ as _llb_all
from llbgen.project import BuildContext, ImageDefinition, Project

__all__ = [*_llb_all, "BuildContext", "ImageDefinition", "Project"]
