"""What a pack does with folders an interrupted pack left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

from helpers import write_tree

from ersilia_pack.pack import pack


def test_a_pack_removes_stale_staging_folders_but_not_fresh_ones(tmp_path: Path) -> None:
    source = write_tree(
        tmp_path / "model",
        {
            "metadata.yml": "Identifier: leftovers\nSlug: leftovers\n",
            "model/framework/run.sh": "cp $2 $3\n",
            "model/framework/columns/run_columns.csv": "name,type,direction,description\n"
            "input,string,,the input itself\n",
        },
    )
    repository = tmp_path / "repository"
    stale = write_tree(repository / "leftovers" / ".partial-20200101-000000-000000", {"x": "1"})
    fresh = write_tree(repository / "leftovers" / ".partial-20990101-000000-000000", {"x": "1"})
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    result = pack(source, backend="system", repository_root=repository)

    assert not stale.exists()
    assert fresh.exists()
    assert result.bundle_dir.parent == repository / "leftovers"
