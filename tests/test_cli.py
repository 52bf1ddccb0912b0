"""The CLI as a user runs it: listing, printing LLB, and what happens on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from llbgen.pb import ops_pb2
from tests.conftest import FAKE_DEBIAN, Cli


def test_ls_lists_images_with_platforms(cli: Cli) -> None:
    result = cli("ls")
    assert result.code == 0, result.stderr
    line = next(line for line in result.text.splitlines() if line.startswith("hello "))
    assert "linux/amd64,linux/arm64" in line
    assert "greets" in line


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64"])
def test_llb_is_accepted_by_buildctl_and_json_matches_dump_llb(cli: Cli, buildctl, platform: str) -> None:
    pb = cli("llb", "hello", "--platform", platform)
    assert pb.code == 0, pb.stderr
    dumped = buildctl("debug", "dump-llb", stdin=pb.stdout)
    assert dumped.returncode == 0, dumped.stderr
    ours = cli("llb", "hello", "--platform", platform, "--format", "json")
    assert ours.code == 0, ours.stderr
    assert ours.text == dumped.stdout.decode()
    assert FAKE_DEBIAN in ours.text
    arch = platform.split("/")[1]
    assert f'"platform":{{"Architecture":"{arch}","OS":"linux"}}' in ours.text


def test_dot_matches_dump_llb(cli: Cli, buildctl) -> None:
    pb = cli("llb", "hello", "--platform", "linux/arm64")
    dot = cli("llb", "hello", "--platform", "linux/arm64", "--format", "dot")
    assert pb.code == 0 and dot.code == 0, pb.stderr + dot.stderr
    dumped = buildctl("debug", "dump-llb", "--dot", stdin=pb.stdout)
    assert dumped.returncode == 0, dumped.stderr
    assert dot.text == dumped.stdout.decode()
    assert dot.text.startswith("digraph {")


def test_definition_source_map_points_at_the_image_file(cli: Cli) -> None:
    definition = ops_pb2.Definition.FromString(cli("llb", "hello").stdout)
    files = [info.filename for info in definition.Source.infos]
    assert files == ["images/hello/image.py"]
    assert b"def build(ctx" in definition.Source.infos[0].data
    lines = {
        loc.ranges[0].start.line
        for locs in definition.Source.locations.values()
        for loc in locs.locations
    }
    source = (cli.cwd / "images/hello/image.py").read_text().splitlines()
    assert any("base_image" in source[n - 1] for n in lines)
    assert any(".run(" in source[n - 1] for n in lines)


def test_build_args_reach_the_definition(cli: Cli) -> None:
    cli.write_image(
        "argy",
        """
        import llbgen
        def build(ctx):
            return llbgen.scratch().file(llbgen.mkfile("/v", 0o644, ctx.arg("VERSION", "none")))
        """,
    )
    out = cli("llb", "argy", "--arg", "VERSION=1.2.3", "--format", "json")
    assert out.code == 0, out.stderr
    assert '"data":"MS4yLjM="' in out.text  # base64 of 1.2.3


def test_one_image_uses_another_without_pushing(cli: Cli) -> None:
    cli.write_image(
        "app",
        """
        import llbgen
        def build(ctx):
            hello = ctx.image("hello")
            return llbgen.scratch().file(llbgen.copy(hello, "/usr/local/bin/hello", "/hello"))
        """,
    )
    app = cli("llb", "app", "--platform", "linux/arm64", "--format", "json")
    hello = cli("llb", "hello", "--platform", "linux/arm64", "--format", "json")
    assert app.code == 0 and hello.code == 0, app.stderr + hello.stderr
    # Every op of hello (but its terminal) is part of app's graph, with the same digests; then app's copy.
    ops = hello.text.splitlines()[:-1]
    assert len(ops) >= 3 and ops == app.text.splitlines()[: len(ops)]
    assert '"src":"/usr/local/bin/hello","dest":"/hello"' in app.text.splitlines()[len(ops)]


def _error(result, code: int) -> str:
    assert result.code == code, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unknown_image_lists_known_ones(cli: Cli) -> None:
    message = _error(cli("llb", "nope"), 2)
    assert "unknown image 'nope'" in message and "hello" in message


@pytest.mark.parametrize("platform", ["linux", "linux//arm64", "linux/amd64/v1/x", ""])
def test_malformed_platform_is_a_usage_error(cli: Cli, platform: str) -> None:
    assert "platform" in _error(cli("llb", "hello", "--platform", platform), 2)


def test_several_platforms_for_llb_is_a_usage_error(cli: Cli) -> None:
    assert "single --platform" in _error(cli("llb", "hello", "--platform", "linux/amd64,linux/arm64"), 2)


@pytest.mark.parametrize("arg", ["NOEQUALS", "=value"])
def test_malformed_arg_is_a_usage_error(cli: Cli, arg: str) -> None:
    assert "KEY=VALUE" in _error(cli("llb", "hello", "--arg", arg), 2)


def test_unknown_option_is_a_usage_error(cli: Cli) -> None:
    assert "--frobnicate" in _error(cli("llb", "hello", "--frobnicate"), 2)


def _located(cli: Cli, name: str, source: str, needle: str) -> str:
    """Writes a broken image, runs llb on it, and checks the error names the broken line."""
    path = cli.write_image(name, source)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text)
    message = _error(cli("llb", name, "--format", "json"), 1)
    assert message.startswith(f"llbgen: error: images/{name}/image.py:{line}: "), message
    return message


def test_definition_that_raises_shows_file_line_and_exception(cli: Cli) -> None:
    message = _located(
        cli,
        "raises",
        """
        import llbgen
        def helper():
            return {}["missing"]
        def build(ctx):
            return helper()
        """,
        '{}["missing"]',
    )
    assert "KeyError: 'missing'" in message


def test_definition_returning_a_non_state(cli: Cli) -> None:
    message = _located(
        cli,
        "wrongtype",
        """
        import llbgen
        def build(ctx):
            return llbgen.image("debian").run("true")
        """,
        "def build",
    )
    assert "returned ExecState, not a llbgen.State" in message and ".root" in message


@pytest.mark.parametrize(
    ("bad_line", "expected", "reported_at"),
    [
        ('mounts=[llbgen.tmpfs("/tmp", size=-1)]', "tmpfs size must be zero", "tmpfs"),
        ('mounts=[llbgen.cache("var/cache", "apt")]', "must be an absolute path", "cache"),
        ('mounts=[llbgen.secret("")]', "non-empty id", "secret"),
        ('mounts=[llbgen.bind("/x", base.run("true"))]', "needs a State", "bind"),
        ('mounts=[llbgen.cache("/c", "c", sharing="sometimes")]', "not one of shared, private, locked", "cache"),
        # a keyword of run() itself: Python reports the line where the call starts
        ('network="internet"', "not one of sandbox, host, none", "base.run("),
    ],
)
def test_invalid_run_options_point_at_the_users_line(
    cli: Cli, bad_line: str, expected: str, reported_at: str
) -> None:
    message = _located(
        cli,
        "badopt",
        f"""
        import llbgen
        def build(ctx):
            base = llbgen.image("debian")
            return base.run(
                "true",
                {bad_line},
            ).root
        """,
        reported_at,
    )
    assert expected in message


def test_copy_from_something_that_is_not_a_state(cli: Cli) -> None:
    message = _located(
        cli,
        "badcopy",
        """
        import llbgen
        def build(ctx):
            built = llbgen.image("debian").run("make")
            return llbgen.scratch().file(llbgen.copy(built, "/out", "/"))
        """,
        "llbgen.copy(",
    )
    assert "copy needs a State to copy from, not ExecState" in message


def test_image_that_depends_on_itself(cli: Cli) -> None:
    message = _located(
        cli,
        "loop",
        """
        import llbgen
        def build(ctx):
            return ctx.image("loop")
        """,
        'ctx.image("loop")',
    )
    assert "depends on itself" in message


def test_syntax_error_in_definition(cli: Cli) -> None:
    message = _located(cli, "syntax", "import llbgen\ndef build(ctx)\n    pass\n", "def build(ctx)")
    assert "syntax error" in message


def test_missing_build_function(cli: Cli) -> None:
    cli.write_image("nobuild", "import llbgen\n")
    assert "defines no build(ctx) function" in _error(cli("llb", "nobuild"), 1)


def test_missing_base_pin_says_what_to_do(cli: Cli) -> None:
    bases = Path(cli.env["LLBGEN_CONFIG"]).parent / "bases.json"
    bases.unlink()
    message = _error(cli("llb", "hello", "--format", "json"), 1)
    assert "images/hello/image.py:" in message
    assert f"not in {bases}" in message and "llbgen.toml" in message and "--arg base:debian:trixie=" in message


def test_base_pin_can_be_given_as_an_arg(cli: Cli) -> None:
    (Path(cli.env["LLBGEN_CONFIG"]).parent / "bases.json").unlink()
    ref = "registry.example/debian:trixie@sha256:" + "1" * 64
    out = cli("llb", "hello", "--arg", f"base:debian:trixie={ref}", "--format", "json")
    assert out.code == 0, out.stderr
    assert ref in out.text


def test_images_share_a_helper_module_loaded_once(cli: Cli) -> None:
    helpers = cli.cwd / "images" / "common"
    helpers.mkdir(parents=True)
    (helpers / "steps.py").write_text("LOADS = []\nLOADS.append(1)\n\ndef greeting():\n    return 'hi'\n")
    cli.write_image(
        "one",
        """
        import llbgen
        def build(ctx):
            steps = ctx.helper("common/steps")
            assert ctx.helper("common/steps") is steps and steps.LOADS == [1]
            return llbgen.scratch().file(llbgen.mkfile("/" + steps.greeting(), 0o644, b""))
        """,
    )
    assert cli("llb", "one", "--format", "json").code == 0


def test_a_missing_helper_module_is_reported_at_the_line_asking_for_it(cli: Cli) -> None:
    message = _located(
        cli, "nohelper", "import llbgen\ndef build(ctx):\n    return ctx.helper('common/absent')\n", "helper("
    )
    assert "no helper module 'common/absent'" in message


def test_a_build_arg_outside_its_choices_is_reported_at_the_line_asking_for_it(cli: Cli) -> None:
    source = (
        "import llbgen\ndef build(ctx):\n    mode = ctx.choice('MODE', ('fast', 'slow'))\n"
        "    return llbgen.scratch().file(llbgen.mkfile('/' + mode, 0o644, b''))\n"
    )
    cli.write_image("choice", source)
    assert cli("llb", "choice", "--arg", "MODE=slow").code == 0
    message = _error(cli("llb", "choice", "--arg", "MODE=other"), 1)
    assert message == "llbgen: error: images/choice/image.py:3: --arg MODE=other: expected one of fast, slow", message


def _pin(n: int) -> str:
    return f"127.0.0.1:5000/llbgen/debian:trixie@sha256:{n:064x}"


def test_the_configuration_comes_from_the_flag_the_variable_or_the_project_directory(cli: Cli) -> None:
    def pinned() -> str:
        out = cli(*args, "llb", "hello", "--format", "json")
        assert out.code == 0, out.stderr
        return next(_pin(n) for n in range(1, 5) if _pin(n) in out.text)

    (cli.cwd / "pyproject.toml").write_text(f'[project]\nname = "x"\n\n[tool.llbgen.bases]\n"debian:trixie" = "{_pin(1)}"\n')
    (cli.cwd / "env.toml").write_text(f'[bases]\n"debian:trixie" = "{_pin(3)}"\n')
    (cli.cwd / "flag.toml").write_text(f'[bases]\n"debian:trixie" = "{_pin(4)}"\n')
    del cli.env["LLBGEN_CONFIG"]
    args: tuple[str, ...] = ()
    assert pinned() == _pin(1)
    (cli.cwd / "llbgen.toml").write_text(f'[bases]\n"debian:trixie" = "{_pin(2)}"\n')
    assert pinned() == _pin(2)
    cli.env["LLBGEN_CONFIG"] = str(cli.cwd / "env.toml")
    assert pinned() == _pin(3)
    args = ("--config", "flag.toml")
    assert pinned() == _pin(4)


def test_pins_of_the_configuration_override_its_bases_file(cli: Cli) -> None:
    config = Path(cli.env["LLBGEN_CONFIG"])
    config.write_text(config.read_text() + f'\n[bases]\n"debian:trixie" = "{_pin(7)}"\n')
    out = cli("llb", "hello", "--format", "json")
    assert out.code == 0 and _pin(7) in out.text and FAKE_DEBIAN not in out.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('bases-file = "bases.json"\nbase-file = "x"\n', "llbgen.toml:2: base-file: unknown key"),
        ('[daemon]\n\nentitlements = ["network.host", "network.none"]\n', "llbgen.toml:3: daemon.entitlements: unknown entitlement 'network.none'"),
        ('[daemon]\ninsecure-registries = ["http://127.0.0.1:5000"]\n', "llbgen.toml:2: daemon.insecure-registries: 'http://127.0.0.1:5000' is not HOST[:PORT]"),
        ('[bases]\n"debian:trixie" = "debian:trixie"\n', "llbgen.toml:2: bases.\"debian:trixie\": 'debian:trixie' is not pinned"),
        ("bases-file = 1\n", "llbgen.toml:1: bases-file: expected a string, not a number"),
        ('bases-file = "a"\n[daemon\n', "llbgen.toml:2: Expected ']' at the end of a table declaration"),
    ],
)  # fmt: skip
def test_a_mistake_in_the_configuration_is_one_line_at_its_file_and_line(cli: Cli, text: str, expected: str) -> None:
    del cli.env["LLBGEN_CONFIG"]
    (cli.cwd / "llbgen.toml").write_text(text)
    message = _error(cli("ls"), 2)
    assert message.startswith(f"llbgen: error: {expected}"), message


def test_a_configuration_that_is_not_there_is_a_usage_error(cli: Cli) -> None:
    assert _error(cli("--config", "absent.toml", "ls"), 2) == "llbgen: error: --config absent.toml: no such file"
    cli.env["LLBGEN_CONFIG"] = "/nonexistent/llbgen.toml"
    assert "$LLBGEN_CONFIG /nonexistent/llbgen.toml: no such file" in _error(cli("ls"), 2)


def test_llbgens_own_daemon_trusts_only_what_the_configuration_says() -> None:
    import tomllib

    from llbgen.client.daemon import EmbeddedDaemon
    from llbgen.config import DaemonSettings

    bare = tomllib.loads(EmbeddedDaemon(Path("/x")).config())
    assert bare["insecure-entitlements"] == [] and "registry" not in bare
    configured = tomllib.loads(EmbeddedDaemon(Path("/x"), DaemonSettings(("127.0.0.1:5000",), ("network.host",))).config())
    assert configured["insecure-entitlements"] == ["network.host"]
    assert configured["registry"] == {"127.0.0.1:5000": {"http": True, "insecure": True}}


def test_build_and_test_share_their_flags(cli: Cli) -> None:
    for command in ("build", "test"):
        assert "--secret 'nokey': " in _error(cli(command, "hello", "--secret", "nokey"), 2)
        assert "--local 'ctx' must be KEY=VALUE" in _error(cli(command, "hello", "--local", "ctx"), 2)
