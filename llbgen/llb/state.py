"""Immutable build states: a filesystem (an op output) plus what later steps and the image inherit.

As in BuildKit's ``client/llb``, every method returns a new state and never changes the receiver, so
a state can be shared, branched and passed between image definitions freely. Unlike Go's state, the
values (env, working directory, user...) are plain fields, so reading them costs nothing however
long the chain of steps that produced the state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Union

import attrs

from llbgen.llb import shell
from llbgen.llb.errors import invalid
from llbgen.llb.exec import ExecOp, Network, Security
from llbgen.llb.graph import Output, ProgressGroup, StepOptions
from llbgen.llb.location import caller
from llbgen.llb.mounts import SSH, Mount, Secret
from llbgen.llb.paths import join
from llbgen.llb.platform import Platform

if TYPE_CHECKING:
    from llbgen.llb.fileop import FileAction

MountSpec = Union[Mount, Secret, SSH]


def _enum_value(enum: type[Network] | type[Security], value: object, what: str) -> int:
    if isinstance(value, enum):
        return value
    if isinstance(value, str) and value.upper() in enum.__members__:
        return enum[value.upper()]
    choices = ", ".join(m.lower() for m in enum.__members__)
    raise invalid(f"{what} {value!r} is not one of {choices}")


@attrs.frozen(eq=False)
class State:
    """A point in the build graph; ``State()`` is scratch, the empty filesystem."""

    output: Output | None = None
    env: tuple[tuple[str, str], ...] = ()
    dir: str = "/"
    user: str = ""
    hostname: str = ""
    network: Network = Network.SANDBOX
    security: Security = Security.SANDBOX
    platform: Platform | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def is_scratch(self) -> bool:
        return self.output is None

    def get_env(self, key: str, default: str | None = None) -> str | None:
        return dict(self.env).get(key, default)

    # -- values inherited by later steps -------------------------------------------------

    def with_env(self, key: str, value: str) -> State:
        """Sets ``key`` for later run steps and in the image config (like Dockerfile ENV)."""
        if not key or "=" in key:
            raise invalid(f"environment variable name {key!r} must be non-empty and without '='")
        env = tuple(kv for kv in self.env if kv[0] != key) + ((key, str(value)),)
        return attrs.evolve(self, env=env)

    def without_env(self, key: str) -> State:
        return attrs.evolve(self, env=tuple(kv for kv in self.env if kv[0] != key))

    def with_dir(self, path: str) -> State:
        """Working directory of later steps; a relative path is below the current one.

        As Go's ``llb.Dir``: a relative path is joined and cleaned (``build/`` is ``/src/build``,
        ``..`` goes up), an absolute one is kept as written.
        """
        if not path.startswith("/"):
            path = join(self.dir or "/", path)
        return attrs.evolve(self, dir=path)

    def with_user(self, user: str) -> State:
        return attrs.evolve(self, user=user)

    def with_hostname(self, hostname: str) -> State:
        return attrs.evolve(self, hostname=hostname)

    def with_network(self, mode: Network | str) -> State:
        return attrs.evolve(self, network=Network(_enum_value(Network, mode, "network mode")))

    def with_security(self, mode: Security | str) -> State:
        return attrs.evolve(self, security=Security(_enum_value(Security, mode, "security mode")))

    def with_platform(self, platform: Platform | str) -> State:
        """The platform later run steps execute on (and that the result is for)."""
        if isinstance(platform, str):
            try:
                platform = Platform.parse(platform)
            except ValueError as exc:
                raise invalid(str(exc)) from None
        return attrs.evolve(self, platform=platform)

    # -- image config ---------------------------------------------------------------------

    def with_entrypoint(self, *args: str) -> State:
        return attrs.evolve(self, entrypoint=tuple(args))

    def with_cmd(self, *args: str) -> State:
        return attrs.evolve(self, cmd=tuple(args))

    def with_label(self, key: str, value: str) -> State:
        labels = tuple(kv for kv in self.labels if kv[0] != key) + ((key, value),)
        return attrs.evolve(self, labels=labels)

    def with_output(self, output: Output | None) -> State:
        """This state's values on another filesystem (how steps carry env, dir... forward).

        An output that has a platform of its own (a source or a run step given one) sets it, as
        Go's ``State.WithOutput`` does.
        """
        platform = output.vertex.output_platform() if output is not None else None
        return attrs.evolve(self, output=output, platform=platform or self.platform)

    # -- steps ----------------------------------------------------------------------------

    def run(
        self,
        command: str | Sequence[str],
        *,
        mounts: Iterable[MountSpec] = (),
        env: Mapping[str, str] | None = None,
        dir: str | None = None,
        user: str | None = None,
        hostname: str | None = None,
        network: Network | str | None = None,
        security: Security | str | None = None,
        valid_exit_codes: Iterable[int] | None = None,
        readonly_rootfs: bool = False,
        platform: Platform | str | None = None,
        name: str | None = None,
        ignore_cache: bool = False,
        progress_group: ProgressGroup | None = None,
    ) -> ExecState:
        """Runs ``command`` (a shell-style string split like ``llb.Shlex``, or an argv list).

        Keyword values apply to this step only; the returned state keeps this state's values.
        """
        location = caller()
        if isinstance(command, str):
            try:
                args = shell.split(command)
            except ValueError as exc:
                raise invalid(f"{exc}: {command!r}") from None
        else:
            args = list(command)
            for index, arg in enumerate(args):
                if not isinstance(arg, str):
                    # str(None) would run a command with a "None" argument, far from the mistake
                    raise invalid(f"run: argument {index} of the command is {arg!r}, not a string")
        if not args:
            raise invalid("run needs a command")
        step = self
        for key, value in (env or {}).items():
            step = step.with_env(key, value)
        if dir is not None:
            step = step.with_dir(dir)
        if user is not None:
            step = step.with_user(user)
        if hostname is not None:
            step = step.with_hostname(hostname)
        if network is not None:
            step = step.with_network(network)
        if security is not None:
            step = step.with_security(security)
        own_platform = None
        if platform is not None:
            step = step.with_platform(platform)
            own_platform = step.platform

        binds: list[Mount] = [Mount("/", self, readonly=readonly_rootfs)]
        secrets: list[Secret] = []
        agents: list[SSH] = []
        for spec in mounts:
            if isinstance(spec, Mount):
                binds.append(spec)
            elif isinstance(spec, Secret):
                secrets.append(spec)
            elif isinstance(spec, SSH):
                agents.append(spec)
            else:
                raise invalid(
                    f"mounts take bind(), cache(), tmpfs(), secret() or ssh() values, not {spec!r}"
                )
        binds.sort(key=lambda m: m.target)
        for before, after in zip(binds, binds[1:]):
            if before.target == after.target:
                raise invalid(f"two mounts at {after.target}")
        codes = None if valid_exit_codes is None else tuple(int(c) for c in valid_exit_codes)
        op = ExecOp(
            args=tuple(args),
            env=step.env,
            cwd=step.dir or "/",
            user=step.user,
            hostname=step.hostname,
            network=step.network,
            security=step.security,
            valid_exit_codes=codes,
            platform=step.platform,
            own_platform=own_platform,
            mounts=tuple(binds),
            secrets=tuple(secrets),
            ssh=tuple(agents),
            options=StepOptions(name=name, ignore_cache=ignore_cache, progress_group=progress_group),
            location=location,
        )
        return ExecState(self, op)

    def file(
        self,
        action: FileAction,
        *,
        name: str | None = None,
        ignore_cache: bool = False,
        progress_group: ProgressGroup | None = None,
    ) -> State:
        """Applies a chain of file actions (``mkdir(...).copy(...)``) as one step."""
        from llbgen.llb.fileop import FileAction, FileOp

        if not isinstance(action, FileAction) or not action.actions:
            raise invalid(
                f"file() takes a chain of file actions such as mkdir(...).copy(...), not {action!r}"
            )
        op = FileOp(
            base=self.output,
            dir=self.dir,
            actions=action.actions,
            options=StepOptions(name=name, ignore_cache=ignore_cache, progress_group=progress_group),
            location=caller(),
        )
        return self.with_output(Output(op))


@attrs.frozen(eq=False)
class ExecState:
    """The result of ``State.run``: its root filesystem, and the outputs of its writable mounts."""

    state: State
    op: ExecOp

    @property
    def root(self) -> State:
        """The root filesystem after the command, with the values of the state it ran on.

        A run given its own ``platform=`` gives that platform to the root (Go's ``Root()``).
        """
        return self.state.with_output(self._output("/"))

    def mount(self, target: str) -> State:
        """The contents of the mount at ``target`` after the command, as a state of its own.

        As Go's ``GetMount``, a new state: working directory ``/``, no env, user or other values
        of the run's state; the platform of the run step if it was given one.
        """
        return State().with_output(self._output(target))

    def _output(self, target: str) -> Output | None:
        for mount in self.op.mounts:
            if mount.target == target:
                break
        else:
            raise invalid(f"the run step has no mount at {target!r}")
        if mount.readonly:
            assert mount.source is not None
            return mount.source.output
        if not mount.has_output:
            kind = "cache" if mount.cache_id else "tmpfs"
            raise invalid(f"the {kind} mount at {target} has no output state to use")
        return Output(self.op, self.op.output_index(target))
