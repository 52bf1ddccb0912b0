"""The exec op: a command run in a container whose root and other mounts are states."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from llbgen.llb import wire
from llbgen.llb.graph import (
    NO_OUTPUT,
    SCRATCH_INPUT,
    MarshalContext,
    Metadata,
    Output,
    StepOptions,
    Vertex,
    op_bytes,
)
from llbgen.llb.location import Location
from llbgen.llb.mounts import SSH, Mount, Secret
from llbgen.llb.platform import Platform

_BIND, _SECRET, _SSH, _CACHE, _TMPFS = range(5)


class Network(enum.IntEnum):
    """Network of a run step (``pb.NetMode``); ``host`` is how builds here reach package mirrors."""

    SANDBOX = 0
    HOST = 1
    NONE = 2


class Security(enum.IntEnum):
    """``INSECURE`` runs privileged and needs the daemon's ``security.insecure`` entitlement."""

    SANDBOX = 0
    INSECURE = 1


@attrs.frozen(eq=False)
class ExecOp(Vertex):
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str
    user: str
    hostname: str
    network: Network
    security: Security
    valid_exit_codes: tuple[int, ...] | None
    platform: Platform | None  # where it runs: the step's own platform, else its state's
    own_platform: Platform | None  # the step's own (run(platform=...)): its outputs' platform
    mounts: tuple[Mount, ...]  # the root ("/") first; sorted by target as Go sorts them
    secrets: tuple[Secret, ...]
    ssh: tuple[SSH, ...]
    options: StepOptions
    location: Location | None

    def output_index(self, target: str) -> int:
        """Index of the output of the writable mount at ``target`` (outputs count in mount order)."""
        index = 0
        for mount in self.mounts:
            if mount.target == target:
                return index if mount.has_output else NO_OUTPUT
            if mount.has_output:
                index += 1
        raise KeyError(target)

    def output_platform(self) -> Platform | None:
        return self.own_platform

    def inputs(self) -> Sequence[Output]:
        seen: dict[Output, None] = {}
        for mount in self.mounts:
            if mount.source is not None and mount.source.output is not None:
                seen.setdefault(mount.source.output)
        return list(seen)

    def encode(self, ctx: MarshalContext) -> tuple[bytes, Metadata]:
        caps = {"exec.meta.base"}
        inputs: list[bytes] = []
        mounts: list[bytes] = []
        next_output = 0
        for mount in self.mounts:
            source = mount.source.output if mount.source is not None else None
            if source is None:
                input_index = SCRATCH_INPUT
            else:
                ref = ctx.input(source)
                if ref not in inputs:
                    inputs.append(ref)
                input_index = inputs.index(ref)
            output = NO_OUTPUT
            if mount.has_output:
                output, next_output = next_output, next_output + 1
            mounts.append(_mount_bytes(mount, input_index, output))
            if mount.selector:
                caps.add("exec.mount.selector")
            if mount.cache_id:
                caps |= {"exec.mount.cache", "exec.mount.cache.sharing"}
            elif mount.tmpfs:
                caps.add("exec.mount.tmpfs")
                if mount.tmpfs_size > 0:
                    caps.add("exec.mount.tmpfs.size")
            elif source is not None:
                caps.add("exec.mount.bind")

        secret_envs = []
        for s in self.secrets:
            if s.env is not None:
                secret_envs.append(
                    wire.str_field(1, s.id) + wire.str_field(2, s.env) + wire.bool_field(3, s.optional)
                )
            if s.target is not None:
                mounts.append(
                    _session_mount_bytes(s.target, _SECRET, 21, s.id, s.uid, s.gid, s.mode, s.optional)
                )
        if self.secrets:
            caps.add("exec.mount.secret")
            if secret_envs:
                caps.add("exec.secretenv")

        env = list(self.env)
        for i, agent in enumerate(self.ssh):
            target = agent.target or f"/run/buildkit/ssh_agent.{i}"
            if i == 0 and not any(k == "SSH_AUTH_SOCK" for k, _ in env):
                env.append(("SSH_AUTH_SOCK", target))
            mounts.append(
                _session_mount_bytes(target, _SSH, 22, agent.id, agent.uid, agent.gid, agent.mode, agent.optional)
            )
        if self.ssh:
            caps.add("exec.mount.ssh")

        if self.valid_exit_codes is not None:
            caps.add("exec.validexitcode")
        if self.network != Network.SANDBOX:
            caps.add("exec.meta.network")
        if self.security == Security.INSECURE:
            caps.add("exec.meta.security")

        meta = (
            wire.repeated_str_field(1, self.args)
            + wire.repeated_str_field(2, (f"{k}={v}" for k, v in env))
            + wire.str_field(3, self.cwd)
            + wire.str_field(4, self.user)
            + wire.str_field(7, self.hostname)
            + wire.bool_field(11, True)  # removeMountStubsRecursive, always set by Go
            + wire.packed_int_field(12, self.valid_exit_codes or ())
        )
        body = (
            wire.message_field(1, meta)
            + wire.repeated_message_field(2, mounts)
            + wire.int_field(3, self.network)
            + wire.int_field(4, self.security)
            + wire.repeated_message_field(5, secret_envs)
        )
        platform = self.platform or ctx.platform
        return op_bytes(ctx, inputs, 2, body, platform), Metadata.for_step(caps, self.options)


def _mount_bytes(mount: Mount, input_index: int, output: int) -> bytes:
    kind = _CACHE if mount.cache_id else _TMPFS if mount.tmpfs else _BIND
    return (
        wire.int_field(1, input_index)
        + wire.str_field(2, mount.selector)
        + wire.str_field(3, mount.target)
        + wire.int_field(4, output)
        + wire.bool_field(5, mount.readonly)
        + wire.int_field(6, kind)
        + wire.message_field(19, wire.int_field(1, mount.tmpfs_size) if mount.tmpfs else None)
        + wire.message_field(
            20,
            wire.str_field(1, mount.cache_id) + wire.int_field(2, mount.sharing)
            if mount.cache_id
            else None,
        )
    )


def _session_mount_bytes(
    target: str, kind: int, opt_field: int, id: str, uid: int, gid: int, mode: int, optional: bool
) -> bytes:
    """Secret and ssh mounts: no input (-1), the output left at 0 as Go leaves it."""
    opt = (
        wire.str_field(1, id)
        + wire.int_field(2, uid)
        + wire.int_field(3, gid)
        + wire.int_field(4, mode)
        + wire.bool_field(5, optional)
    )
    return (
        wire.int_field(1, SCRATCH_INPUT)
        + wire.str_field(3, target)
        + wire.int_field(6, kind)
        + wire.message_field(opt_field, opt)
    )
