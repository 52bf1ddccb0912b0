"""The LLB graph library: immutable states, their ops, and Go-identical marshalling."""

from llbgen.llb.definition import DEFAULT_LOCAL_UNIQUE_ID, Definition, marshal
from llbgen.llb.errors import DefinitionError, LLBGenError, UsageError
from llbgen.llb.exec import Network, Security
from llbgen.llb.fileop import FileAction, copy, mkdir, mkfile, rm, symlink
from llbgen.llb.graph import ProgressGroup
from llbgen.llb.merge import diff, merge
from llbgen.llb.mounts import CacheSharing, bind, cache, secret, ssh, tmpfs
from llbgen.llb.platform import Platform
from llbgen.llb.sources import git, http, image, local, oci_layout, scratch
from llbgen.llb.state import ExecState, State

__all__ = [
    "DEFAULT_LOCAL_UNIQUE_ID",
    "CacheSharing",
    "Definition",
    "DefinitionError",
    "ExecState",
    "FileAction",
    "LLBGenError",
    "Network",
    "Platform",
    "ProgressGroup",
    "Security",
    "State",
    "UsageError",
    "bind",
    "cache",
    "copy",
    "diff",
    "git",
    "http",
    "image",
    "local",
    "marshal",
    "merge",
    "mkdir",
    "mkfile",
    "oci_layout",
    "rm",
    "scratch",
    "secret",
    "ssh",
    "symlink",
    "tmpfs",
]
