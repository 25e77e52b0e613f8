"""Code dependencies: DVC reruns a stage exactly when a library file its script runs changes.

The `code` stage writes, per stage script, the import closure structlth.codedeps finds; every
stage of dvc.yaml depends on its own script's file. These tests check the closure against the
modules a script really loads, and dvc.yaml against the scripts its stages run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import ROOT, tool_env
from structlth.codedeps import closure, code_manifest, manifest_digest

STAGE_SCRIPT = re.compile(r"python stages/(\w+)\.py")


def _package(tmp_path):
    """A toy `structlth` package: script -> a (which imports sub.b inside a function); c unused."""
    pkg = tmp_path / "structlth"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from structlth.sub import b\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from structlth import errors_absent_is_fine  # not a module\nX = 1\n")
    (pkg / "c.py").write_text("Y = 2\n")
    script = tmp_path / "stage.py"
    script.write_text("from structlth.a import f\n")
    return script


def test_closure_follows_function_level_imports_and_packages(tmp_path):
    script = _package(tmp_path)
    names = {f.relative_to(tmp_path.resolve()).as_posix() for f in closure(script, tmp_path)}
    assert names == {"stage.py", "structlth/__init__.py", "structlth/a.py", "structlth/sub/__init__.py", "structlth/sub/b.py"}


def test_manifest_digest_changes_with_imported_code_only(tmp_path):
    script = _package(tmp_path)
    before = manifest_digest(code_manifest(script, tmp_path))
    (tmp_path / "structlth" / "c.py").write_text("Y = 3\n")  # not imported
    (tmp_path / "structlth" / "sub" / "__pycache__").mkdir()
    (tmp_path / "structlth" / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"\x00")
    assert manifest_digest(code_manifest(script, tmp_path)) == before
    (tmp_path / "structlth" / "sub" / "b.py").write_text("X = 2\n")
    assert manifest_digest(code_manifest(script, tmp_path)) != before


PROBE = """
import json, runpy, sys
loaded = {}
for script in sys.argv[1:]:
    for name in [n for n in sys.modules if n.split(".")[0] == "structlth"]:
        del sys.modules[name]  # each script imports the library afresh; torch stays loaded
    sys.argv[:] = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit:
        pass
    loaded[script] = [m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] == "structlth" and getattr(m, "__file__", None)]
print("LOADED " + json.dumps(loaded))
"""


def test_the_closure_holds_every_module_a_stage_script_loads():
    """Every library file a stage script loads (its argparse --help path runs every top-level
    import) is in the closure its DVC stage depends on."""
    scripts = sorted((ROOT / "stages").glob("*.py"))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, scripts)], cwd=ROOT, capture_output=True, text=True, env=tool_env(), timeout=300
    )
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("LOADED ")]
    loaded = json.loads(line.removeprefix("LOADED "))
    for script in scripts:
        files = {Path(f).resolve() for f in loaded[str(script)]}
        assert files, f"{script.name}: the probe loaded no library module"
        missing = files - set(closure(script, ROOT))
        assert not missing, f"{script.name} loads {sorted(map(str, missing))}, which its code closure misses"


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_depends_on_the_code_its_script_runs():
    """A stage that runs stages/X.py must depend on artifacts/code/X.json (its closure), and the
    code stage must track every folder of library code."""
    stages = _stages()
    assert set(stages["code"]["deps"]) == {"stages", "structlth"}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        scripts = STAGE_SCRIPT.findall(body["cmd"])
        assert len(scripts) == 1, f"{name}: one stage script per stage ({body['cmd']})"
        if name == "code":
            continue
        deps = [d if isinstance(d, str) else next(iter(d)) for d in body["deps"]]
        assert f"artifacts/code/{scripts[0]}.json" in deps, (
            f"{name} runs stages/{scripts[0]}.py but does not depend on artifacts/code/{scripts[0]}.json"
        )
        assert not [d for d in deps if d.startswith(("structlth", "stages/"))], (
            f"{name}: code deps come from artifacts/code, not a hand list"
        )


def test_the_code_stage_writes_one_closure_per_stage_script(tmp_path):
    subprocess.run([sys.executable, "stages/code.py", "--out", str(tmp_path)], cwd=ROOT, check=True, env=tool_env())
    scripts = {s.stem for s in (ROOT / "stages").glob("*.py")}
    assert {f.stem for f in tmp_path.glob("*.json")} == scripts
    written = yaml.safe_load((tmp_path / "bench.json").read_text())
    assert written == code_manifest(ROOT / "stages" / "bench.py", ROOT)
    assert "structlth/speedup/bench.py" in written and "structlth/report.py" not in written
