r"""Structure tests: what an image must contain, checked inside the build graph on every platform.

In the spirit of container-structure-test. An image declares its tests next to its definition, in
``images/<name>/tests.py``: a ``tests(ctx)`` function returning a list of checks (``ctx`` is the
same ``BuildContext`` ``build(ctx)`` gets, so checks can depend on ``ctx.target_platform`` and
build args, and ``ctx.image(...)``/``ctx.base_image(...)`` give helper states), or a ``TESTS``
list when the checks are the same on every platform::

    from llbgen.structure import CommandTest, FileContentTest, FileExistenceTest

    UNAME = {"amd64": "x86_64", "arm64": "aarch64"}

    def tests(ctx):
        machine = UNAME[ctx.target_platform.architecture]
        return [
            CommandTest("version", ["bpftool", "version"], expected_output=r"^bpftool v7\.5\.0"),
            CommandTest("static", ["sh", "-c", "ldd /image/usr/local/bin/bpftool 2>&1"],
                        image_mount="/image", exit_code=None,
                        expected_output="statically linked|not a dynamic executable"),
            CommandTest("machine", ["uname", "-m"], image_mount="/image", expected_output=f"^{machine}$"),
            FileExistenceTest("binary", "/usr/local/bin/bpftool", permissions="-rwxr-xr-x", uid=0, gid=0),
            FileContentTest("config", "/etc/tool.conf", expected_contents="^mode=fast$",
                            excluded_contents="password"),
        ]

The checks:

- ``CommandTest(name, command, *, expected_output=, excluded_output=, expected_error=,
  excluded_error=, exit_code=0, env=, setup=, files=, user=, dir=, timeout=, image_mount=,
  helper=)``: runs ``command`` (an argv list, or a string split like ``State.run``'s; no shell)
  in the image under test as a container of it would (its env, working directory and user; not
  its entrypoint), also in a ``scratch`` image with no shell. ``exit_code=None`` accepts any.
  ``env`` adds variables; ``files`` (``{path: text}``) are written and then ``setup`` commands
  run, before the command and in the same container; a failing setup step fails the check.
  ``timeout`` in seconds. With ``image_mount="/image"`` the command runs in the helper (the
  pinned Debian base, or ``helper=`` such as ``ctx.image("compilers")``) with the image mounted
  read-only there: for tools the image does not have (``ldd``, ``od``, ``readelf``).
- ``FileExistenceTest(name, path, *, should_exist=True, permissions=, uid=, gid=,
  follow_symlinks=False)``: ``permissions`` is ``ls -l``'s string (``-rwxr-xr-x``, file type
  included: ``lrwxrwxrwx`` for a symlink) or an octal mode (``0o755`` or ``"0755"``, permission
  bits only). A final symlink is not followed unless ``follow_symlinks``.
- ``FileContentTest(name, path, *, expected_contents=, excluded_contents=)``: the file's first
  8 MiB, symlinks followed.

Every regular-expression field takes one pattern or a list; patterns are Python ``re``, searched
anywhere with ``re.MULTILINE`` (``^``/``$`` match at each line), and compiled when the check is
made, so a typo is reported at its line of ``tests.py``. Names must be unique within an image.

``llbgen test IMAGE [--platform P,...] [-k REGEX] [-v]`` compiles every check into one run step
on the image's own state (see ``llbgen.structure.compiler``: same digests as ``llbgen build``, so
the image comes from the cache), for every platform (default: the image's ``PLATFORMS``; arm64
under QEMU), builds them all in one multi-platform solve, and judges the recorded results in
Python: a failing check never stops the others. It prints one line per check and platform, with
the output and the unmet expectations of each failure, and exits 0 when all passed, 1 otherwise.
"""

from llbgen.structure.spec import Check, CommandTest, FileContentTest, FileExistenceTest

__all__ = ["Check", "CommandTest", "FileContentTest", "FileExistenceTest"]
