"""A bundle that cannot serve is never marked done: any column name renders, text outside the
Basic Multilingual Plane documents, and a render or import failure fails the pack."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers import FIXTURES, ROOT, app_client, run_command, served

from ersilia_pack import __version__
from ersilia_pack.errors import RenderError
from ersilia_pack.pack import pack
from ersilia_pack.templating import pyliteral

NAMES = ["r²", "log P (o/w)", "class", "naïve", "2nd", "r2"]
ALPHA = "\U0001d6fc"  # mathematical italic alpha, outside the BMP


@pytest.fixture(scope="module")
def odd_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    return pack(FIXTURES / "odd-column-names", backend="system", repository_root=root).bundle_dir


def test_columns_named_like_r_squared_render_and_serve_under_their_own_names(
    odd_bundle: Path,
) -> None:
    with app_client(odd_bundle) as client:
        response = client.post("/run", json=["CCO", "hello"])
        openapi = client.get("/openapi.json")

    assert response.status_code == 200, response.text
    assert response.json() == [
        {"r²": 9, "log P (o/w)": 0.3, "class": "C", "naïve": "CCO", "2nd": 5, "r2": 2},
        {"r²": 25, "log P (o/w)": 0.5, "class": "h", "naïve": "HELLO", "2nd": 7, "r2": 2},
    ]
    row_schema = openapi.json()["components"]["schemas"]["RunRow"]
    assert list(row_schema["properties"]) == NAMES


def test_text_outside_the_bmp_answers_in_openapi_and_docs(odd_bundle: Path) -> None:
    with app_client(odd_bundle) as client:
        openapi = client.get("/openapi.json")
        docs = client.get("/docs")
        card = client.get("/card/Description")

    assert openapi.status_code == 200, openapi.text
    document = openapi.json()
    assert "🧪" in document["info"]["title"]
    assert f"😀 {ALPHA}" in document["info"]["description"]
    properties = document["components"]["schemas"]["RunRow"]["properties"]
    assert properties["r²"]["description"] == "the length squared 🧪"
    assert properties["class"]["description"] == f"the first character ({ALPHA} is outside the BMP)"
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert f"🧪 😀 {ALPHA}" in card.json()


def test_the_rendered_app_of_odd_names_compiles_and_passes_the_linter(odd_bundle: Path) -> None:
    config = str(ROOT / "pyproject.toml")
    lint = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--config",
            config,
            "--no-cache",
            odd_bundle / "app",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("program", ["worker", "warm"])
def test_the_model_side_programs_are_the_package_s_modules_naming_the_bundle_s_model(
    odd_bundle: Path, program: str
) -> None:
    source = Path(importlib.import_module(f"ersilia_pack.model_side.{program}").__file__ or "")
    assert (odd_bundle / "app" / f"{program}.py").read_bytes() == source.read_bytes()
    assert (odd_bundle / "app" / "ersilia_framing.py").read_bytes() == (
        source.parent / "framing.py"
    ).read_bytes()

    # Run as the server runs it (a script beside ersilia_framing.py), without its arguments,
    # and without site-packages: the standard library is all it may need.
    done = subprocess.run(
        [sys.executable, "-S", odd_bundle / "app" / f"{program}.py"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 2, done.stderr
    assert f"of odd-column-names (ersilia_pack {__version__})\nusage: {program}.py" in done.stderr


def test_the_manifest_keeps_the_column_names(odd_bundle: Path) -> None:
    manifest = json.loads((odd_bundle / "manifest.json").read_text(encoding="utf-8"))
    assert [column["name"] for column in manifest["apis"][0]["columns"]] == NAMES
    assert json.loads((odd_bundle / "status.json").read_text()) == {"done": True}


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        'quotes " and \\ backslashes',
        f"emoji 😀 and {ALPHA} beyond the BMP",
        "naïve r² \u2028 separators",
        "a long description with 🧪 that wraps over several implicit pieces " * 3,
        "line\nbreak\tand tab",
    ],
)
def test_pyliteral_gives_python_the_same_text_back(text: str) -> None:
    literal = pyliteral(text)
    value = eval(literal)  # the rendered source, read back as Python reads it
    assert value == text
    value.encode("utf-8")  # no lone surrogates
    assert literal.isascii()


def test_a_lone_surrogate_renders_as_a_replacement_character() -> None:
    assert eval(pyliteral("bad \ud83d end")) == "bad \ufffd end"
    assert eval(pyliteral("pair \ud83d\ude00 end")) == "pair 😀 end"


def test_a_generated_module_that_does_not_compile_fails_the_pack_and_leaves_no_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A render bug of the kind `r²` was: the identifier the template gets is no identifier.
    monkeypatch.setattr("ersilia_pack.render._identifier", lambda name, taken: "r²")
    repository = tmp_path / "repository"
    with pytest.raises(RenderError) as caught:
        pack(FIXTURES / "odd-column-names", backend="system", repository_root=repository)

    assert caught.value.exit_code == 4
    assert "the generated app/schemas.py does not compile" in caught.value.render()
    assert not repository.exists() or not any(repository.rglob("status.json"))


@pytest.mark.parametrize("check", [True, False], ids=["checked", "no-check"])
def test_an_app_that_fails_to_import_fails_the_pack_and_leaves_no_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: bool
) -> None:
    from ersilia_pack import render

    original = render.render_template

    def broken(name: str, context: render.RenderContext, **extra: object) -> str:
        text = original(name, context, **extra)
        return text + '\nraise RuntimeError("broken router")\n' if name == "app/api.py.j2" else text

    monkeypatch.setattr(render, "render_template", broken)
    repository = tmp_path / "repository"
    with pytest.raises(RenderError) as caught:
        pack(
            FIXTURES / "stdlib-simple",
            backend="system",
            repository_root=repository,
            check=check,
        )

    message = caught.value.render()
    assert message.startswith("the bundle cannot be served:"), message
    assert "failed to import: broken router" in message
    assert not repository.exists() or not any(repository.rglob("status.json"))


def test_ersilia_serve_serves_the_odd_columns_the_cli_packed(tmp_path: Path) -> None:
    done = run_command(
        "ersilia_pack", "--model_dir", FIXTURES / "odd-column-names", "--system", "--eos", tmp_path
    )
    assert done.returncode == 0, done.stderr

    with served(tmp_path / "repository" / "odd-column-names") as url:
        answer = httpx.post(f"{url}/run", json=["CCO"], timeout=60)
        openapi = httpx.get(f"{url}/openapi.json", timeout=60)

    assert answer.status_code == 200, answer.text
    assert answer.json()[0]["r²"] == 9
    assert openapi.status_code == 200 and "🧪" in openapi.json()["info"]["title"]
