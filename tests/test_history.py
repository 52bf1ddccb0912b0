"""Image configs name every layer when the definition made them all (llbgen/client/history.py)."""

from __future__ import annotations

import llbgen
from llbgen.client.imageconfig import image_config
from llbgen.llb.platform import Platform
from tests.graphs import DEB

AMD64 = Platform.parse("linux/amd64")


def created_by(state: llbgen.State) -> list[str] | None:
    history = image_config(state, AMD64).get("history")
    return None if history is None else [entry["created_by"] for entry in history]


def test_layers_from_scratch_are_named_after_their_steps_bottom_first() -> None:
    built = llbgen.image(DEB).run("make", mounts=[llbgen.bind("/out", llbgen.scratch())], name="make")
    first = llbgen.scratch().file(llbgen.copy(built.mount("/out"), "/a", "/a"), name="copy a")
    second = first.file(llbgen.mkdir("/etc"), name="mkdir /etc")
    assert created_by(first) == ["copy a"]
    assert created_by(second) == ["copy a", "mkdir /etc"]
    # a run step's writable mount is a layer of its own on the mount's source
    assert created_by(built.mount("/out")) == ["make"]
    on_first = first.run("make", mounts=[llbgen.bind("/out", second)], name="make on second")
    assert created_by(on_first.mount("/out")) == ["copy a", "mkdir /etc", "make on second"]
    assert image_config(first, AMD64)["history"][0]["comment"] == "buildkit.exporter.image.v0"


def test_layers_of_a_base_image_or_an_unnamed_step_are_left_to_the_exporter() -> None:
    assert created_by(llbgen.image(DEB).run("make", name="make").root) is None
    assert created_by(llbgen.scratch().file(llbgen.mkdir("/etc"))) is None
    assert created_by(llbgen.scratch().file(llbgen.mkdir("/etc")).file(llbgen.mkdir("/x"), name="x")) is None
    assert created_by(llbgen.scratch()) == []
