"""Reading a model directory: validation, API discovery, examples and columns."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FIXTURES, write_tree

from ersilia_pack.errors import ModelDirError
from ersilia_pack.model_dir import read_model_dir

CARD = "Identifier: eos-unit\nSlug: unit-model\n"
RUN_SH = "python $1/code/main.py $2 $3\n"


def columns_of(*apis: str) -> dict[str, str]:
    """A one-column columns file for each API (an API must name its output columns)."""
    return {
        f"model/framework/columns/{api}_columns.csv": "name,type\nvalue,float\n" for api in apis
    }


LOAD_ONCE = """\
class Model:
    def load(self):
        pass

    def predict(self, inputs):
        return [[len(text)] for text in inputs]
"""


def problems_of(model_dir: Path) -> list[str]:
    """The problems read_model_dir reports, as a user reads them."""
    with pytest.raises(ModelDirError) as caught:
        read_model_dir(model_dir)
    assert caught.value.exit_code == 1
    rendered = caught.value.render()
    assert "Traceback" not in rendered
    lines = [str(problem) for problem in caught.value.problems]
    for line in lines:
        assert line in rendered
    return lines


def test_a_valid_directory_is_read(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "metadata.yml": CARD + "Title: A unit model\n",
            "install.sh": "pip install nothing\n",
            "model/framework/run.sh": RUN_SH,
            **columns_of("run"),
        },
    )

    spec = read_model_dir(tmp_path)

    assert (spec.model_id, spec.slug) == ("eos-unit", "unit-model")
    assert spec.metadata["Title"] == "A unit model"
    assert [(api.name, api.kind, api.script) for api in spec.apis] == [("run", "sh", "run.sh")]
    assert spec.plan.source == "install.sh"
    assert len(spec.model_hash) == 64


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "metadata.yml": "Identifier: ../x\nSlug: has space\n",
            "model/framework/run.sh": RUN_SH,
            "model/framework/columns/run_columns.csv": (
                "name,type,direction,description\nscore,decimal,,a score\nlabel,string,,\n"
            ),
        },
    )

    lines = problems_of(tmp_path)

    assert len(lines) == 3, lines
    assert lines[0].startswith("metadata.yml: 'Identifier' is \"../x\", not a safe name (use ")
    assert lines[1].startswith("metadata.yml: 'Slug' is \"has space\", not a safe name (use ")
    assert lines[2] == (
        "model/framework/columns/run_columns.csv: line 2: type 'decimal' of column 'score' "
        "is not one of float, integer, string, other (use float, integer, string or other)"
    )


def test_no_metadata_and_no_api_scripts_are_both_reported(tmp_path: Path) -> None:
    write_tree(tmp_path, {"model/framework/code/main.py": "print('hi')\n"})

    lines = problems_of(tmp_path)

    assert len(lines) == 2, lines
    assert "metadata" in lines[0] and "is missing" in lines[0]
    assert lines[1].startswith("model/framework: has no API script (add run.sh")


def test_missing_framework_folder_is_reported(tmp_path: Path) -> None:
    write_tree(tmp_path, {"metadata.yml": CARD})

    assert problems_of(tmp_path) == [
        "model/framework: is missing (put each API's script there, e.g. model/framework/run.sh)"
    ]


def test_malformed_metadata_and_bad_columns_are_reported_together(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "metadata.yml": "Identifier: eos1\n  Slug: bad indent: here\n",
            "model/framework/run.sh": RUN_SH,
            "model/framework/columns/run_columns.csv": "column,kind\nscore,float\n",
        },
    )

    lines = problems_of(tmp_path)

    assert len(lines) == 2, lines
    assert lines[0].startswith("metadata.yml: is not valid YAML: ")
    assert "line 2" in lines[0]
    assert lines[1].startswith("model/framework/columns/run_columns.csv: header is ")
    assert "it needs 'name' and 'type'" in lines[1]


def test_a_missing_folder_is_one_clear_problem(tmp_path: Path) -> None:
    lines = problems_of(tmp_path / "nope")

    assert lines == [
        f"{tmp_path / 'nope'}: does not exist or is not a folder (pass the folder "
        "holding metadata.yml and model/)"
    ]


def test_the_bad_metadata_fixture_lists_all_its_problems() -> None:
    lines = problems_of(FIXTURES / "bad-metadata")

    assert len(lines) == 4, lines
    assert "'Identifier' is \"../escape\"" in lines[0]
    assert "'Slug' is \"has space\"" in lines[1]
    assert "type 'decimal'" in lines[2]
    assert "has 1 rows but the example input has 2" in lines[3]


def test_apis_come_from_sh_and_load_once_py_files(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "metadata.yml": CARD,
            "model/framework/run.sh": RUN_SH,
            "model/framework/fingerprint.sh": RUN_SH,
            "model/framework/embed.py": LOAD_ONCE,
            # a helper module beside the scripts: no class with load() and predict()
            "model/framework/utils.py": "def load():\n    pass\n\n\ndef predict():\n    pass\n",
            # a class with only one of the two methods is no API either
            "model/framework/half.py": "class Half:\n    def predict(self, xs):\n        pass\n",
            "model/framework/broken.py": "class Broken(:\n",
            **columns_of("embed", "fingerprint", "run"),
        },
    )

    apis = read_model_dir(tmp_path).apis

    assert [(api.name, api.kind, api.script, api.class_name) for api in apis] == [
        ("embed", "py", "embed.py", "Model"),
        ("fingerprint", "sh", "fingerprint.sh", None),
        ("run", "sh", "run.sh", None),
    ]


def test_py_wins_over_sh_of_the_same_name(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "metadata.yml": CARD,
            "model/framework/run.sh": RUN_SH,
            "model/framework/run.py": LOAD_ONCE,
            **columns_of("run"),
        },
    )

    [api] = read_model_dir(tmp_path).apis

    assert (api.name, api.kind, api.script) == ("run", "py", "run.py")


def test_an_unsafe_api_name_is_reported(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "metadata.yml": CARD,
            "model/framework/run.sh": RUN_SH,
            "model/framework/my run.sh": "",
            **columns_of("run"),
        },
    )

    lines = problems_of(tmp_path)

    assert lines == [
        "model/framework/my run.sh: API name 'my run' is not a safe name "
        "(rename it with letters, digits, '_' or '-')"
    ]


@pytest.mark.parametrize(
    ("present", "expected_input"),
    [
        (
            [
                "model/framework/examples/run_input.csv",
                "model/framework/examples/input.csv",
                "example_input.csv",
            ],
            "model/framework/examples/run_input.csv",
        ),
        (
            ["model/framework/examples/input.csv", "example_input.csv"],
            "model/framework/examples/input.csv",
        ),
        (["example_input.csv"], "example_input.csv"),
    ],
)
def test_examples_are_looked_up_in_order(
    tmp_path: Path, present: list[str], expected_input: str
) -> None:
    files = {"metadata.yml": CARD, "model/framework/run.sh": RUN_SH}
    for path in present:
        files[path] = f"smiles\n{path}\n"
        files[path.replace("input", "output")] = f"value\nfrom {path}\n"
    write_tree(tmp_path, files)

    [api] = read_model_dir(tmp_path).apis

    assert api.example_input == [expected_input]
    assert api.example_output == [[f"from {expected_input}"]]


def test_examples_of_one_api_do_not_leak_to_another(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "metadata.yml": CARD,
            "model/framework/run.sh": RUN_SH,
            "model/framework/other.sh": RUN_SH,
            "model/framework/examples/other_input.csv": "input\nfor-other\n",
            "model/framework/examples/other_output.csv": "value\n1\n",
            "model/framework/examples/input.csv": "input\nshared\n",
            "model/framework/examples/output.csv": "value\n2\n",
        },
    )

    apis = {api.name: api for api in read_model_dir(tmp_path).apis}

    assert apis["other"].example_input == ["for-other"]
    assert apis["run"].example_input == ["shared"]


def test_columns_file_types_the_output(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "metadata.yml": CARD,
            "model/framework/run.sh": RUN_SH,
            "model/framework/columns/run_columns.csv": (
                "name,type,direction,description\n"
                "mw,float,high,Molecular weight\n"
                "donors,INTEGER,,\n"
                'label,string,,"A label, with a comma"\n'
                "blob,other,,\n"
            ),
            "model/framework/examples/run_input.csv": "smiles\nCCO\n",
            # the example output may carry key and input columns before the outputs
            "model/framework/examples/run_output.csv": (
                "key,input,mw,donors,label,blob\nk1,CCO,46.07,1,small,x\n"
            ),
        },
    )

    [api] = read_model_dir(tmp_path).apis

    assert [(c.name, c.type, c.direction, c.description) for c in api.columns] == [
        ("mw", "float", "high", "Molecular weight"),
        ("donors", "integer", "", ""),
        ("label", "string", "", "A label, with a comma"),
        ("blob", "other", "", ""),
    ]
    assert api.example_output == [["46.07", "1", "small", "x"]]


def test_without_columns_the_example_output_names_and_types_them(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "metadata.yml": CARD,
            "model/framework/run.sh": RUN_SH,
            "model/framework/examples/run_input.csv": "input\nCCO\nCCN\n",
            "model/framework/examples/run_output.csv": (
                "key,input,count,score,label,empty\nk1,CCO,1,0.5,a,\nk2,CCN,2,1,b,\n"
            ),
        },
    )

    [api] = read_model_dir(tmp_path).apis

    assert [(c.name, c.type) for c in api.columns] == [
        ("count", "integer"),
        ("score", "float"),
        ("label", "string"),
        ("empty", "other"),
    ]
    assert api.example_input == ["CCO", "CCN"]


def test_an_api_whose_output_columns_nothing_names_is_reported(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "metadata.yml": CARD,
            "model/framework/run.sh": RUN_SH,
            "model/framework/other.sh": RUN_SH,
            "model/framework/columns/other_columns.csv": "name,type,direction,description\n",
            # an example input alone does not name the outputs
            "model/framework/examples/run_input.csv": "input\nCCO\n",
        },
    )

    assert problems_of(tmp_path) == [
        "model/framework/columns/other_columns.csv: names no output column (list each output "
        "column as name,type,direction,description, or add "
        "model/framework/examples/other_output.csv with a header row)",
        "model/framework/columns/run_columns.csv: is missing, and no example output of run "
        "names its output columns (list each output column as name,type,direction,description, "
        "or add model/framework/examples/run_output.csv with a header row)",
    ]


def test_an_empty_metadata_file_is_reported_not_crashed_on(tmp_path: Path) -> None:
    write_tree(
        tmp_path, {"metadata.yml": "", "model/framework/run.sh": RUN_SH, **columns_of("run")}
    )

    assert problems_of(tmp_path) == [
        "metadata.yml: 'Identifier' is missing (e.g. Identifier: eos3b5e)",
        "metadata.yml: 'Slug' is missing (e.g. Slug: molecular-weight)",
    ]
