"""scripts/setup.sh skips the C++ build when its build stamp (scripts/build_stamp.py) matches.

Unit tests work on copies of csrc/ and setup.py under tmp_path (the real csrc/ is never
touched) with fixed torch/Python/compiler facts; one integration test runs setup.sh in
the repository, which scripts/test.sh has just set up, and checks that it skipped.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("build_stamp", ROOT / "scripts" / "build_stamp.py")
bs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bs)

TORCH = {"version": "2.13.0+cpu", "git": "abc", "cuda": None, "hip": None, "location": "/opt/torch"}
PYTHON = {"version": "3.11.7", "implementation": "cpython", "prefix": "/opt/py", "ext_suffix": ".so",
          "machine": "x86_64"}
COMPILER = {"cxx": "c++", "path": "/usr/bin/g++-12", "version": "g++ 12.2.0"}


def _inputs(root, torch=TORCH, environ=None):
    return bs.build_inputs(root, torch=torch, python=PYTHON, compiler=COMPILER, environ=environ or {})


@pytest.fixture
def tree(tmp_path):
    """A copy of what the build reads: csrc/ and setup.py, plus a fake built extension."""
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    shutil.copy2(ROOT / "setup.py", tmp_path / "setup.py")
    (tmp_path / "fastsmall").mkdir()
    bs.extension_path(tmp_path, ".so").write_bytes(b"\x7fELF fake extension")
    return tmp_path


def _stamped(tree, path=None):
    """Record a stamp for the tree as `record` would after a build; return (record, stamp path)."""
    record = _inputs(tree)
    record["extension_sha256"] = bs._sha256_file(bs.extension_path(tree, ".so"))
    path = path or tree / "build" / "stamp.json"
    bs.write_stamp(record, path)
    return record, path


def test_stamp_is_stable_and_ignores_mtimes(tree):
    before = _inputs(tree)
    assert _inputs(tree)["stamp"] == before["stamp"]
    for path in (tree / "csrc").rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    os.utime(tree / "setup.py", (2_000_000_000, 2_000_000_000))
    assert _inputs(tree)["stamp"] == before["stamp"]


def test_stamp_changes_with_a_csrc_file_content(tree):
    before = _inputs(tree)
    target = tree / "csrc" / "cpu" / "kcs_cpu.cpp"
    target.write_text(target.read_text() + "\n// changed\n")
    after = _inputs(tree)
    assert after["stamp"] != before["stamp"]
    assert after["toolchain_hash"] == before["toolchain_hash"]
    assert bs.changed_sources(before, after) == ["csrc/cpu/kcs_cpu.cpp"]
    assert "csrc/cpu/kcs_cpu.cpp" in bs.describe_change(before, after)


def test_stamp_changes_with_a_header_content(tree):
    before = _inputs(tree)
    header = tree / "csrc" / "cpu" / "simd.h"
    header.write_bytes(header.read_bytes().replace(b"\n", b"\n\n", 1))
    assert _inputs(tree)["stamp"] != before["stamp"]


@pytest.mark.parametrize("new_file", ["csrc/new_op.cpp", "csrc/cpu/new_kernels.h", "csrc/cuda/op.cu"])
def test_stamp_changes_when_a_csrc_file_appears(tree, new_file):
    before = _inputs(tree)
    (tree / new_file).parent.mkdir(parents=True, exist_ok=True)
    (tree / new_file).write_text("// new\n")
    assert _inputs(tree)["stamp"] != before["stamp"]


def test_stamp_changes_when_a_csrc_file_is_removed(tree):
    before = _inputs(tree)
    (tree / "csrc" / "macros.h").unlink()
    assert _inputs(tree)["stamp"] != before["stamp"]


def test_stamp_changes_with_the_torch_version(tree):
    before = _inputs(tree)
    for change in ({"version": "2.13.1+cpu"}, {"version": "2.13.0+cu126", "cuda": "12.6"}, {"git": "def"}):
        after = _inputs(tree, torch={**TORCH, **change})
        assert after["stamp"] != before["stamp"], change
        assert after["toolchain_hash"] != before["toolchain_hash"]
        assert "torch" in bs.describe_change(before, after)


def test_stamp_changes_with_compile_flags_and_build_environment(tree):
    before = _inputs(tree)
    assert before["toolchain"]["flags"]["CXX_FLAGS"] == bs.setup_flags(ROOT / "setup.py")["CXX_FLAGS"]
    assert "-fopenmp" in before["toolchain"]["flags"]["CXX_FLAGS"]
    assert _inputs(tree, environ={"CXXFLAGS": "-march=native"})["stamp"] != before["stamp"]
    assert _inputs(tree, environ={"FASTSMALL_FORCE_CUDA": "1"})["stamp"] != before["stamp"]
    setup_py = tree / "setup.py"
    setup_py.write_text(setup_py.read_text().replace('"-O3", "-fno-math-errno"', '"-O2", "-fno-math-errno"', 1))
    after = _inputs(tree)
    assert after["toolchain"]["flags"]["CXX_FLAGS"][0] == "-O2"
    assert after["stamp"] != before["stamp"]


def test_stamp_changes_with_python_and_compiler(tree):
    before = _inputs(tree)
    other_py = bs.build_inputs(tree, torch=TORCH, python={**PYTHON, "version": "3.12.1"}, compiler=COMPILER,
                               environ={})
    other_cc = bs.build_inputs(tree, torch=TORCH, python=PYTHON, compiler={**COMPILER, "version": "g++ 13"},
                               environ={})
    assert len({before["stamp"], other_py["stamp"], other_cc["stamp"]}) == 3


def test_real_probes_do_not_import_torch():
    out = subprocess.run([sys.executable, "-c",
                          "import sys; sys.path.insert(0, 'scripts'); import build_stamp as b; "
                          "r = b.build_inputs(); print(r['toolchain']['torch']['version'], 'torch' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    version, imported = out.stdout.split()
    import torch
    assert version == torch.__version__ and imported == "False"


def test_up_to_date_when_stamp_and_extension_match(tree):
    _, path = _stamped(tree)
    ok, why = bs.up_to_date(_inputs(tree), bs.read_stamp(path), bs.extension_path(tree, ".so"), root=tree)
    assert ok, why


def test_not_up_to_date_when_the_extension_is_missing_or_replaced(tree):
    _, path = _stamped(tree)
    so = bs.extension_path(tree, ".so")
    so.write_bytes(b"another build")
    ok, why = bs.up_to_date(_inputs(tree), bs.read_stamp(path), so, root=tree)
    assert not ok and "not the file" in why
    so.unlink()
    ok, why = bs.up_to_date(_inputs(tree), bs.read_stamp(path), so, root=tree)
    assert not ok and "missing" in why


def test_not_up_to_date_when_sources_changed(tree):
    _, path = _stamped(tree)
    (tree / "csrc" / "extra.cpp").write_text("// new\n")
    ok, why = bs.up_to_date(_inputs(tree), bs.read_stamp(path), bs.extension_path(tree, ".so"), root=tree)
    assert not ok and "csrc/extra.cpp" in why


@pytest.mark.parametrize("content", [None, "", "{not json", "[]", '{"schema": 1}', '{"schema": 99, "stamp": "x"}'])
def test_not_up_to_date_when_the_stamp_file_is_absent_or_corrupt(tree, content):
    record, path = _stamped(tree)
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    assert bs.read_stamp(path) is None
    ok, why = bs.up_to_date(_inputs(tree), bs.read_stamp(path), bs.extension_path(tree, ".so"), root=tree)
    assert not ok and "no valid build stamp" in why


def test_stamp_is_written_atomically(tree):
    record, path = _stamped(tree)
    assert bs.read_stamp(path) == json.loads(json.dumps(record))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        bs.write_stamp({**record, "bad": Unserialisable()}, path)
    assert bs.read_stamp(path) == json.loads(json.dumps(record)), "a failed write must keep the old stamp"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_install_must_be_an_editable_install_of_this_checkout(tree):
    here = os.path.realpath(tree)
    good = {"package": os.path.join(here, "fastsmall"),
            "direct_url": {"url": f"file://{here}", "dir_info": {"editable": True}}}
    assert bs.install_problem(good, tree) is None
    assert "not this checkout" in bs.install_problem({**good, "package": "/elsewhere/fastsmall"}, tree)
    assert "not this checkout" in bs.install_problem({**good, "package": None}, tree)
    assert "not installed as an editable" in bs.install_problem({**good, "direct_url": None}, tree)
    assert "points at file:///elsewhere" in bs.install_problem(
        {**good, "direct_url": {"url": "file:///elsewhere", "dir_info": {"editable": True}}}, tree)
    so = bs.extension_path(tree, ".so")
    assert bs.load_problem({**good, "extension": os.path.realpath(so)}, so) is None
    assert "fails" in bs.load_problem({**good, "load_error": "ImportError: boom"}, so)
    ok, why = bs.up_to_date(_inputs(tree), bs.read_stamp(_stamped(tree)[1]), so,
                            probe={**good, "package": "/elsewhere/fastsmall"}, root=tree)
    assert not ok and "not this checkout" in why


def test_incremental_build_bumps_mtimes_of_changed_files(tree):
    stamp, _ = _stamped(tree)
    changed = tree / "csrc" / "cpu" / "kcs_cpu.cpp"
    unchanged = tree / "csrc" / "fastsmall.cpp"
    changed.write_text(changed.read_text() + "// edit\n")
    for path in (changed, unchanged):  # as after `cp -p` or tar: content changed, mtime old
        os.utime(path, (1_000_000_000, 1_000_000_000))
    current = _inputs(tree)
    build_dir = bs.prepare_incremental(tree, stamp, current)
    assert build_dir.name.startswith("temp-fastsmall-") and current["toolchain_hash"][:16] in build_dir.name
    assert changed.stat().st_mtime > 1_500_000_000
    assert unchanged.stat().st_mtime == 1_000_000_000
    # A later attempt also bumps files that differ from what the last attempt built,
    # even if they match the stamp again (a failed build followed by a restore).
    changed.write_text(changed.read_text().replace("// edit\n", ""))
    os.utime(changed, (1_000_000_000, 1_000_000_000))
    bs.prepare_incremental(tree, stamp, _inputs(tree))
    assert changed.stat().st_mtime > 1_500_000_000


def test_plan_decides_skip_incremental_or_full(tree, monkeypatch, capsys):
    """plan() with the real toolchain probes, and an install probe that says `tree` is installed."""
    for name in ("FASTSMALL_REBUILD", "CXXFLAGS"):
        monkeypatch.delenv(name, raising=False)
    so = bs.extension_path(tree)
    so.write_bytes(b"\x7fELF fake extension")
    here = os.path.realpath(tree)
    probe = {"package": os.path.join(here, "fastsmall"), "extension": os.path.realpath(so),
             "direct_url": {"url": f"file://{here}", "dir_info": {"editable": True}}}
    monkeypatch.setattr(bs, "probe_install", lambda load=True: dict(probe))
    stamp_path, pending = tree / "build" / "stamp.json", tree / "build" / "pending.json"

    def plan():
        code = bs.plan(root=tree, stamp_path=stamp_path, pending=pending)
        return code, capsys.readouterr().out.strip()

    assert plan()[0] == bs.EXIT_FULL  # no stamp yet
    record = bs.read_json(pending)
    record["extension_sha256"] = bs._sha256_file(so)
    bs.write_stamp(record, stamp_path)
    assert plan() == (bs.EXIT_SKIP, bs.SKIP_LINE)

    monkeypatch.setenv("FASTSMALL_REBUILD", "1")
    code, line = plan()
    assert code == bs.EXIT_FULL and "FASTSMALL_REBUILD=1" in line
    monkeypatch.delenv("FASTSMALL_REBUILD")

    monkeypatch.setattr(bs, "probe_install", lambda load=True: {**probe, "load_error": "ImportError: x"})
    code, line = plan()
    assert code == bs.EXIT_INCREMENTAL and "import fastsmall._C fails" in line
    monkeypatch.setattr(bs, "probe_install", lambda load=True: dict(probe))

    (tree / "csrc" / "fastsmall.cpp").write_text("// edited\n")
    code, line = plan()
    assert code == bs.EXIT_INCREMENTAL and "csrc/fastsmall.cpp" in line
    assert bs.read_json(pending)["sources"]["csrc/fastsmall.cpp"] != record["sources"]["csrc/fastsmall.cpp"]

    monkeypatch.setenv("CXXFLAGS", "-march=native")
    code, line = plan()
    assert code == bs.EXIT_FULL and "toolchain changed: env" in line
    monkeypatch.delenv("CXXFLAGS")

    monkeypatch.setattr(bs, "probe_install", lambda load=True: {**probe, "package": "/elsewhere/fastsmall"})
    code, line = plan()
    assert code == bs.EXIT_FULL


def test_setup_sh_skips_the_build_when_up_to_date():
    """scripts/test.sh ran setup.sh before pytest, so running it again must skip the build."""
    so = bs.extension_path(ROOT)
    ok, why = bs.up_to_date(bs.build_inputs(ROOT), bs.read_stamp(bs.STAMP_FILE), so,
                            probe=bs.probe_install(load=True), root=ROOT)
    if not ok:  # running setup.sh now would rebuild the extension under the running suite
        message = f"the build is not up to date ({why}); run scripts/setup.sh before the tests"
        if os.environ.get("FASTSMALL_REQUIRE_EXTENSION") == "1":  # scripts/test.sh: it just ran setup.sh
            pytest.fail(message)
        pytest.skip(message)
    mtime = so.stat().st_mtime_ns
    env = {k: v for k, v in os.environ.items() if k != "FASTSMALL_REBUILD"}
    env["PYTHON"] = sys.executable
    out = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert bs.SKIP_LINE in out.stdout, out.stdout + out.stderr
    assert so.stat().st_mtime_ns == mtime
