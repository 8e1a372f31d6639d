"""The README's configuration table is what `gdx config --markdown` prints: no setting undocumented."""

from __future__ import annotations

import subprocess
import sys

from gdx.common.settings import REPO_ROOT


def test_readme_configuration_table_matches_gdx_config():
    printed = subprocess.run([sys.executable, "-m", "gdx.cli", "config", "--markdown"], capture_output=True,
                             text=True, check=True).stdout.strip()
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("`gdx config --markdown` prints this table.", 1)[1].strip()
    assert table == printed, "README's configuration table is stale: regenerate it with `gdx config --markdown`"
