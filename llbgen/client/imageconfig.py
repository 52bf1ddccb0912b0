"""The OCI image config an image definition declares through its final state."""

from __future__ import annotations

import json
from typing import Any

from llbgen.client.history import layer_history
from llbgen.llb.platform import Platform
from llbgen.llb.state import State

#: What Dockerfile builds put in an image's PATH when the definition sets none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image_config(state: State, platform: Platform) -> dict[str, Any]:
    """Env, working directory, user, entrypoint, cmd and labels of ``state``, for ``platform``.

    The daemon's image exporter fills in the layers, and the history unless the definition says
    what every layer is (:mod:`llbgen.client.history`).
    """
    env = dict(state.env)
    env.setdefault("PATH", DEFAULT_PATH)
    config: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in env.items()]}
    if state.dir and state.dir != "/":
        config["WorkingDir"] = state.dir
    if state.user:
        config["User"] = state.user
    if state.entrypoint is not None:
        config["Entrypoint"] = list(state.entrypoint)
    if state.cmd is not None:
        config["Cmd"] = list(state.cmd)
    if state.labels:
        config["Labels"] = dict(state.labels)
    image: dict[str, Any] = {
        **platform.to_json(),
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    history = layer_history(state)
    if history is not None:
        image["history"] = history
    return image


def encode(config: dict[str, Any]) -> bytes:
    return json.dumps(config, separators=(",", ":"), sort_keys=False).encode()
