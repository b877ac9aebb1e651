"""Which libraries a warm container imports ahead: found statically in the pack's action files."""

from __future__ import annotations

import threading

import pytest

from attune_containers.core.pooling import PoolSettings
from attune_containers.errors import InvalidSpecError
from attune_containers.runtimes.python import preload


def pack(tmp_path, files: dict[str, str]):
    actions = tmp_path / "actions"
    actions.mkdir(parents=True)
    for name, text in files.items():
        path = actions / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_module_level_imports_of_libraries_are_found_and_the_packs_own_modules_are_not(tmp_path):
    root = pack(
        tmp_path,
        {
            "a.py": "import requests\nimport os.path\nfrom pydantic import BaseModel\nfrom . import sibling\n"
            "import helper\nfrom attune_action import get_secret\nfrom __future__ import annotations\n"
            "def run():\n    import lazy_inside\n",
            "helper.py": "import boto3\n",
            "pkg/__init__.py": "",
            "b.py": "import pkg.sub\nimport json, decimal\n",
            "notes.txt": "import nothing",
        },
    )
    assert preload.discover(root) == ("boto3", "decimal", "json", "os", "pydantic", "requests")


def test_files_that_do_not_parse_or_are_links_add_nothing(tmp_path):
    root = pack(tmp_path, {"bad.py": "import (", "deep.py": "x = " + "(" * 5000 + ")" * 5000 + "\nimport json\n"})
    (root / "actions" / "link.py").symlink_to("/etc/passwd")
    assert preload.discover(root) == ()


def test_a_pack_without_actions_preloads_nothing(tmp_path):
    assert preload.discover(tmp_path) == ()


def test_parsing_from_many_threads_at_once_is_safe(tmp_path):
    root = pack(tmp_path, {f"a{i}.py": "import json\nx = " + "[" * 50 + "]" * 50 + "\n" for i in range(20)})
    results, errors = [], []

    def work():
        try:
            results.append(preload.discover(root))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and set(results) == {("json",)}


@pytest.mark.parametrize("names", [["os; rm -rf /"], ["a b"], ["attune_action"], ["x"] * 65, ["-m"], [""]])
def test_a_packs_own_preload_list_is_validated(names):
    with pytest.raises(InvalidSpecError):
        preload.checked(names)
    with pytest.raises(ValueError):
        PoolSettings(preload=names)


def test_a_packs_own_list_is_kept_and_empty_turns_it_off():
    assert PoolSettings(preload=["requests", "google.protobuf"]).preload == ["requests", "google.protobuf"]
    assert PoolSettings(preload=[]).preload == []
