"""The gateway frontend: one build of one image definition, asked for by BuildKit.

1. ``Ping`` the bridge (caps, workers); read the options (``BUILDKIT_FRONTEND_OPT_<i>``).
2. Solve the ``dockerfile`` local (or frontend input) and copy its files into a temporary
   directory laid out as an ``images/`` project: the definition named by ``filename`` and
   everything beside it.
3. Load the definition with llbgen's ``Project``, marshal it for each requested platform, and
   hand the definitions to the same code ``llbgen build`` uses in gateway-client mode
   (``llbgen.client.build``), which solves them and ``Return``s one result, with
   ``refs.platforms`` and the image config of each platform when there are several.
4. Any error is ``Return``ed as a ``google.rpc.Status`` (see ``llbgen.frontend.errors``).

Local sources of the definition (``llbgen.local("context")``) are read from the client's session
by name, so ``--local context=DIR`` works as it does for Dockerfiles.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import attrs

from llbgen.client.build import BuildRequest, local_dirs_needed, solve_and_return
from llbgen.client.connection import distinct_platforms
from llbgen.client.run import make_targets, unsupported_platforms
from llbgen.frontend import errors, inputs, options
from llbgen.frontend.options import FrontendOptions
from llbgen.llb.errors import UsageError
from llbgen.llb.platform import Platform
from llbgen.pb import gateway_pb2, ops_pb2
from llbgen.project import DEFINITION_FILE, ImageDefinition, Project
from llbgen.release.bundle import BUNDLE_FILE, read_bundle

log = logging.getLogger("llbgen.frontend")

CAP_INPUTS = "moby.buildkit.frontend.inputs"


@attrs.define
class _FrontendProject(Project):
    """The images the frontend received; the main one may be in a file not named image.py."""

    main: str = ""
    main_file: Path | None = None
    _main_loaded: bool = attrs.field(default=False, init=False)

    def missing_pin_message(self, name: str) -> str:
        return (
            f"no pinned reference for base image {name!r}: pass one as a build argument, "
            f"--opt build-arg:base:{name}=REF@sha256:... (buildx: --build-arg base:{name}=REF@sha256:...)"
        )

    def definition(self, name: str) -> ImageDefinition:
        if name == self.main and self.main_file is not None and not self._main_loaded:
            self._main_loaded = True
            return self.add_definition(name, self.main_file)
        try:
            return super().definition(name)
        except UsageError as exc:
            if not exc.message.startswith("unknown image"):
                raise
            raise UsageError(
                f"{exc.message}. llbgen's frontend sees only the files of the dockerfile directory: "
                "to build with other images of the project, pass its images directory "
                "(--local dockerfile=images --opt filename=NAME/image.py)"
            ) from None



@attrs.frozen
class _Layout:
    """Where the definition lands in the temporary project, and what to ask the client for."""

    name: str  # the name of the image to build, in the project
    tree: Path  # where the dockerfile directory's files are written
    images: Path  # the project's images/ directory
    main_file: Path | None  # the definition file when it is not <images>/<name>/image.py
    include: tuple[str, ...]  # include patterns for local://dockerfile
    required: str  # the file that must be in the dockerfile directory ("" when target decides)


def plan(opts: FrontendOptions, tmp: Path) -> _Layout:
    """Lays the dockerfile directory out as a project, from the shape of ``filename``.

    ``image.py`` (or ``bpftool.py``): the directory is the image's own; the image is named after
    ``target``, else the file. ``hello/image.py``: the directory holds several images (a project's
    ``images/``), and ``target`` may pick another of them. ``images/hello/image.py``: the
    directory is a project root, and only ``images/`` is transferred.
    """
    path = PurePosixPath(opts.filename)
    image_dir = path.parent
    if str(image_dir) == ".":
        name = opts.target or path.stem
        images = tmp / "images"
        tree = images / name
        main_file = None if path.name == DEFINITION_FILE else tree / path.name
        return _Layout(name, tree, images, main_file, (), opts.filename)
    tree = tmp / "src"
    images = tree / image_dir.parent
    include = () if str(image_dir.parent) == "." else (str(image_dir.parent),)
    if opts.target and opts.target != image_dir.name:
        return _Layout(opts.target, tree, images, None, include, "")
    main_file = None if path.name == DEFINITION_FILE else tree / path
    return _Layout(image_dir.name, tree, images, main_file, include, opts.filename)


def run(bridge: Any, environ: Mapping[str, str]) -> None:
    """One build, once the connection is up: ends with ``Return`` of a result or an error."""
    session_id = environ.get("BUILDKIT_SESSION_ID", "")
    pong = bridge.Ping(gateway_pb2.PingRequest(), timeout=30)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="llbgen-frontend-") as tmp:
        try:
            opts = options.parse(options.from_environ(environ))
            start = time.perf_counter()
            request = prepare(bridge, pong, opts, session_id, Path(tmp), environ)
            prepared = time.perf_counter()
            # Solves each platform's definition and returns the result: llbgen build's code.
            solve_and_return(bridge, request)
            log.info(
                "%s for %s: definition read and marshalled in %.3fs, solved and returned in %.3fs",
                opts.filename,
                ",".join(str(t.platform) for t in request.targets),
                prepared - start,
                time.perf_counter() - prepared,
            )
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the client
            _return_error(bridge, exc)
        finally:
            os.chdir(cwd)


def _return_error(bridge: Any, exc: BaseException) -> None:
    status = errors.status_of(exc)
    log.info("build failed: %s", status.message)
    try:
        bridge.Return(gateway_pb2.ReturnRequest(error=status), timeout=30)
    except Exception as again:  # noqa: BLE001 - nothing more can be told to the client
        log.error("could not return the error to BuildKit: %s", again)


def prepare(
    bridge: Any,
    pong: gateway_pb2.PongResponse,
    opts: FrontendOptions,
    session_id: str,
    tmp: Path,
    environ: Mapping[str, str],
) -> BuildRequest:
    """Reads the definition from the client and marshals it for every requested platform."""
    caps = {cap.ID for cap in pong.FrontendAPICaps if cap.Enabled}
    given: dict[str, ops_pb2.Definition] = {}
    if CAP_INPUTS in caps:
        given = dict(bridge.Inputs(gateway_pb2.InputsRequest()).Definitions)

    layout = plan(opts, tmp)
    if inputs.LOCAL_NAME in given:
        source, from_input = given[inputs.LOCAL_NAME], True
    else:
        name = opts.dockerfile_local
        session = opts.local_sessions.get(name, session_id)
        source, from_input = inputs.local_definition(session, layout.include, opts.filename, name), False
    ref = inputs.solve_ref(bridge, source)
    layout.tree.mkdir(parents=True)
    files = inputs.copy_tree(bridge, ref, layout.tree)
    if BUNDLE_FILE in files:  # marshalled by llbgen llb --bundle: nothing to evaluate
        return BuildRequest(targets=read_bundle(layout.tree, opts.platforms), no_cache=opts.no_cache, cache_from=opts.cache_imports)
    if layout.required and layout.required not in files:
        raise inputs.missing_file_error(opts.filename, files, from_input)
    # Paths in messages and source maps are shown relative to the working directory: there,
    # they read as they do on the client (image.py:12, hello/image.py:12).
    os.chdir(layout.tree)

    project = _FrontendProject(
        layout.images,
        main=layout.name,
        main_file=layout.main_file,
    )
    workers = worker_platforms(pong, environ)
    native = workers[0] if workers else Platform.host()
    definition = project.definition(layout.name)
    platforms = list(opts.platforms or [definition.default_platform(native)])
    problem = unsupported_platforms(platforms, workers) if workers else None
    if problem:
        raise UsageError(f"BuildKit {problem}")
    # Unique per client session, like the dockerfile frontend's local.session: the local sources
    # of two clients' builds are never one vertex. Later steps still hit the cache (by content).
    unique = f"llbgen-frontend-{session_id}" if session_id else "llbgen-frontend"
    targets = make_targets(project, layout.name, platforms, opts.args, native, unique)

    needed = local_dirs_needed([t.definition for t in targets])
    for name in needed:
        if opts.local_sessions.get(name, session_id) != session_id:
            raise UsageError(
                f"the client serves local {name!r} from a session of its own (buildx bake targets that "
                "share a directory), which llbgen's frontend does not support yet: build the targets "
                "one at a time"
            )
        if name in given:
            raise UsageError(
                f"the definition reads local source {name!r}, which this request passes as a frontend "
                "input (not a local directory): llbgen's frontend reads local sources from the client's "
                f"--local {name}=DIR"
            )
    return BuildRequest(
        targets=targets,
        no_cache=opts.no_cache,
        cache_from=opts.cache_imports,
    )


def worker_platforms(pong: gateway_pb2.PongResponse, environ: Mapping[str, str]) -> list[Platform]:
    return distinct_platforms(pong.Workers) or options.workers_from_environ(environ)

