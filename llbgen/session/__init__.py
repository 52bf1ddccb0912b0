"""The client side of a BuildKit session: services the daemon calls back during a build."""

from llbgen.session.core import Service, Session

__all__ = ["Service", "Session"]
