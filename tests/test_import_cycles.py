"""The import-cycle check: clean on hierps, and it catches a planted cycle in a tiny package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from textwrap import dedent

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_import_cycles.py"


def check(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=60
    )


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))
    return root / "tiny"


def test_hierps_has_no_import_cycles():
    done = check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no import cycles" in done.stdout


def test_a_planted_cycle_is_reported(tmp_path):
    package = write_package(
        tmp_path,
        {
            "tiny/__init__.py": "",
            # A three-module cycle through a subpackage's __init__ and a relative import.
            "tiny/a.py": "from tiny.sub import b\n",
            "tiny/sub/__init__.py": "from .b import value\n",
            "tiny/sub/b.py": "import tiny.c\nvalue = 1\n",
            "tiny/c.py": "from tiny import a\n",
            "tiny/clean.py": "import tiny.a\n",
        },
    )
    done = check(str(package))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "tiny.a, tiny.c, tiny.sub.b" in done.stdout
    assert "tiny.a -> tiny.sub.b -> tiny.c -> tiny.a" in done.stdout
    assert "tiny/c.py:1 imports tiny.a" in done.stdout
    assert "tiny.clean" not in done.stdout


def test_a_module_importing_itself_is_a_cycle(tmp_path):
    package = write_package(tmp_path, {"tiny/__init__.py": "", "tiny/a.py": "from . import a\n"})
    done = check(str(package))
    assert done.returncode == 1
    assert "tiny.a -> tiny.a" in done.stdout


def test_deferred_imports_do_not_count(tmp_path):
    package = write_package(
        tmp_path,
        {
            "tiny/__init__.py": "",
            "tiny/a.py": """\
                from typing import TYPE_CHECKING

                import tiny.b

                if TYPE_CHECKING:
                    from tiny.b import B
                """,
            "tiny/b.py": """\
                import typing

                if typing.TYPE_CHECKING:
                    import tiny.a
                else:
                    import json


                def load():
                    from tiny import a

                    return a


                class B:
                    def method(self):
                        import tiny.a
                """,
        },
    )
    done = check(str(package))
    assert done.returncode == 0, done.stdout
    # The same import in a class body or an else branch runs at import time.
    (package / "b.py").write_text("class B:\n    import tiny.a\n")
    assert check(str(package)).returncode == 1
    (package / "b.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n    import tiny.a\n"
    )
    assert check(str(package)).returncode == 1


def test_a_directory_without_init_is_refused(tmp_path):
    done = check(str(tmp_path))
    assert done.returncode == 2
    assert "not a package" in done.stderr
