"""Code dependencies: DVC reruns a stage exactly when a library file it runs changes.

The `code` stage writes, per stage script, the import closure structlth.codedeps finds, and for
the scripts that load a method by name, one closure per method entry (structlth.stage_code);
every stage of dvc.yaml depends on its own file. These tests check the closures against the
modules a script and its method really load, and dvc.yaml against the files its stages need.
The edits each must rerun are checked under DVC in test_dvc_pipeline.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import ROOT, tiny_raw, tool_env
from structlth.codedeps import closure, code_manifest, manifest_digest
from structlth.config import parse_params
from structlth.pruning import registry
from structlth.stage_code import PER_METHOD, stage_manifests

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
    loaded_by_name = {f.relative_to(tmp_path.resolve()).as_posix() for f in closure(script, tmp_path, ["structlth.c"])}
    assert loaded_by_name == names | {"structlth/c.py"}  # a module a registry loads by name joins the closure


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
    """A stage that runs stages/X.py must depend on codedeps/X.json (its closure), or, when
    X loads a method by name, on codedeps/X-<its entry>.json; the code stage must track
    every folder of library code and the params entries that name methods."""
    stages = _stages()
    assert set(stages["code"]["deps"]) == {"stages", "structlth"}
    assert set(stages["code"]["params"]) == {"tickets", "baselines", "group_chains"}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        scripts = STAGE_SCRIPT.findall(body["cmd"])
        assert len(scripts) == 1, f"{name}: one stage script per stage ({body['cmd']})"
        if name == "code":
            continue
        deps = [d if isinstance(d, str) else next(iter(d)) for d in body["deps"]]
        own = f"codedeps/{scripts[0]}-${{item.name}}.json" if scripts[0] in PER_METHOD else f"codedeps/{scripts[0]}.json"
        assert own in deps, f"{name} runs stages/{scripts[0]}.py but does not depend on {own}"
        assert not [d for d in deps if d.startswith(("structlth", "stages/"))], f"{name}: code deps come from codedeps, not a hand list"


def _names(manifest: dict) -> set[str]:
    return {Path(f).name for f in manifest}


def test_the_code_stage_writes_one_closure_per_stage_and_per_method(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw()))
    subprocess.run(
        [sys.executable, "stages/code.py", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "code")],
        cwd=ROOT,
        check=True,
        env=tool_env(),
    )
    p = parse_params(tiny_raw())
    scripts = {s.stem for s in (ROOT / "stages").glob("*.py")} - set(PER_METHOD)
    entries = {f"ticket-{n}" for n in [*p.tickets, *p.baselines]} | {f"group_chain-{n}" for n in p.group_chains}
    assert {f.stem for f in (tmp_path / "code").glob("*.json")} == scripts | entries
    written = yaml.safe_load((tmp_path / "code" / "bench.json").read_text())
    assert written == code_manifest(ROOT / "stages" / "bench.py", ROOT)
    assert "structlth/speedup/measure.py" in written and not _names(written) & {"report.py", "train.py", "tickets.py"}
    methods = {"refill.py", "regroup.py", "torch_pruning.py", "omp.py", "random.py", "snip.py", "synflow.py"}
    for entry, own in [("refill", "refill.py"), ("regroup", "regroup.py"), ("tp_l1", "torch_pruning.py")]:
        manifest = yaml.safe_load((tmp_path / "code" / f"ticket-{entry}.json").read_text())
        assert _names(manifest) & methods == {own}, f"ticket-{entry}: {sorted(_names(manifest) & methods)}"
    for script in scripts - {"replicate"}:
        assert not _names(yaml.safe_load((tmp_path / "code" / f"{script}.json").read_text())) & methods, script
    assert _names(yaml.safe_load((tmp_path / "code" / "replicate.json").read_text())) & methods == {
        "refill.py",
        "regroup.py",
        "torch_pruning.py",
    }


def test_a_source_other_than_imp_adds_its_module_to_its_tickets_closure():
    raw = tiny_raw()
    raw["tickets"]["refill"]["source"] = "snip"
    manifests = stage_manifests(parse_params(raw), ROOT / "stages", ROOT)
    assert {"refill.py", "snip.py", "topk.py"} <= _names(manifests["ticket-refill"])
    assert "snip.py" not in _names(manifests["ticket-regroup"])


METHOD_PROBE = """
import json, sys, tempfile
from pathlib import Path
import torch
from helpers import synthetic_dataset, tiny_raw
from structlth.artifacts import save_tensors
from structlth.config import parse_params
from structlth.masks import effective_flops, ones_masks
from structlth.pruning.magnitude import magnitude_prune
from structlth.rounds import Context

pretrain = Path(tempfile.mkdtemp())
loaded = {}
for name, (section, entry, edit) in json.loads(sys.argv[1]).items():
    raw = tiny_raw()
    raw[section][entry].update(edit)
    params = parse_params(raw)
    ctx = Context(params, synthetic_dataset(), torch.device("cpu"))
    model = ctx.model()
    save_tensors(pretrain / "weights.safetensors", model.state_dict(), {**ctx.model_meta(), "kind": "weights"})
    masks = magnitude_prune(model.state_dict(), ones_masks(model), 0.5)
    for n in [n for n in sys.modules if n.startswith("structlth.pruning.") and n != "structlth.pruning.magnitude"]:
        del sys.modules[n]  # each method loads from nothing but the registry
    import structlth.tickets as tickets
    before = set(sys.modules)
    if section == "baselines":
        tickets.baseline_masks(ctx, params.baselines[entry], effective_flops(model, masks, ctx.input_shape)[1], 8, pretrain)
    else:
        tickets.structured_masks(ctx, params.tickets[entry], model.state_dict(), masks, pretrain)
    loaded[name] = sorted(m.__file__ for n, m in sys.modules.items() if n.startswith("structlth.") and n not in before)
print("LOADED " + json.dumps(loaded))
"""
SOURCES = ("omp", "random", "snip", "synflow")


def test_a_ticket_loads_no_method_module_but_those_in_its_closure():
    """Run every kind, source and importance through the ticket stage's own entry
    (structlth.tickets): the library modules it loads on the way are all in the closure its DVC
    stage depends on, so no other method's module is loaded at all."""
    probes = {
        "refill": ("tickets", "refill", {}),
        "refill-l1": ("tickets", "refill", {"criterion": "l1"}),
        "regroup": ("tickets", "regroup", {}),
        "tp_l1-taylor": ("baselines", "tp_l1", {"importance": "taylor"}),
        **{f"refill-{src}": ("tickets", "refill", {"source": src, "source_iterations": 2}) for src in SOURCES},
    }
    proc = subprocess.run(
        [sys.executable, "-c", METHOD_PROBE, json.dumps(probes)], cwd=ROOT / "tests", capture_output=True, text=True, env=tool_env()
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("LOADED ")]
    assert lines, proc.stderr[-3000:]
    loaded = json.loads(lines[0].removeprefix("LOADED "))
    for name, (section, entry, edit) in probes.items():
        raw = tiny_raw()
        raw[section][entry].update(edit)
        spec = getattr(parse_params(raw), section)[entry]
        allowed = set(closure(ROOT / "stages" / "ticket.py", ROOT, registry.modules(spec)))
        files = {Path(f).resolve() for f in loaded[name]}
        assert files, f"{name}: the probe loaded no method module"
        assert files <= allowed, f"{name} loads {sorted(map(str, files - allowed))}, which its code closure misses"
