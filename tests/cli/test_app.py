from typer.testing import CliRunner

from dreamcloth.cli.app import app


def test_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "bench" in result.output


def test_bench_unknown_section_is_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--section", "nope", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 2
    assert "unknown benchmark section 'nope'" in result.output
