"""Build stamp for scripts/setup.sh: skip the C++ build when nothing that affects it changed.

``pip install -e .`` builds the extension in a fresh temporary directory, so running
it again recompiles everything (minutes) even when nothing changed. setup.sh asks
this module first:

    python scripts/build_stamp.py plan --pending FILE   # prints one line; exit 0 = skip, 10 = incremental, 11 = full
    python scripts/build_stamp.py build-dir FILE        # the persistent ninja directory (incremental builds)
    python scripts/build_stamp.py record FILE           # after a successful build: check it, write the stamp

The stamp is a SHA-256 over everything that affects the build (see ``build_inputs``):
the content (not the mtime) of every file under csrc/ and of setup.py (which holds
the compile flags; they are recorded separately too), the environment variables the
build reads, the installed torch (version, CUDA/HIP, location, C++ ABI), the Python
(version, prefix, extension suffix) and the C++ compiler (path and ``--version``).
CMakeLists.txt is not read by setup.py, so it is not part of the stamp.

The build is skipped only when all of these hold:
  * the stamp file exists, parses, and its stamp equals the one computed now;
  * fastsmall/_C<EXT_SUFFIX> exists and is the very file that build produced (its SHA-256);
  * the installed ``fastsmall`` distribution is an editable install of this checkout
    (direct_url.json, and ``import fastsmall`` run outside the repository resolves here);
  * ``import fastsmall._C`` succeeds there with FASTSMALL_REQUIRE_EXTENSION=1
    (fastsmall/_extension.py also checks _build_info.json against the installed torch).
Anything else means a build; FASTSMALL_REBUILD=1 forces a full one.

Incremental builds: when only csrc/ contents changed since the recorded build (same
toolchain, torch, Python, setup.py, environment) and the editable install already
points here, setup.sh runs ``setup.py build_ext --inplace`` with a persistent ninja
build directory, build/temp-fastsmall-<hash of the toolchain inputs>, so only the
changed translation units (ninja's depfiles track the headers) are recompiled. The
directory is keyed by the toolchain hash so objects built against another torch or
compiler are never reused, and files whose content changed get their mtime bumped
first so ninja cannot miss a change that kept an old mtime (see prepare_incremental). Anything
else (first install, other torch/compiler/Python, setup.py changed, install points
elsewhere, FASTSMALL_REBUILD=1) runs the full ``pip install -e .`` as before.
Why: measured on the 2-core development machine (shared, so noisy), the full build took
296-472 s; the incremental one 32-67 s after one .cpp changed, 70 s after csrc/cpu/simd.h
changed, 5 s with nothing changed. The editable install loads fastsmall/ from this
checkout, so the in-place .so is what `import fastsmall._C` gets. The first incremental
build after a full install compiles everything once (pip's objects were in a temporary
directory).

Importable without torch and without the extension, and computing the stamp does not
import torch either (see ``torch_info``); only the import check runs it, in a subprocess.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP_FILE = ROOT / "build" / "fastsmall-build-stamp.json"  # build/ is git-ignored
SCHEMA = 1
SKIP_LINE = "fastsmall extension up to date (sources unchanged), skipping build"

#: Environment variables that the build (setup.py, torch.utils.cpp_extension, distutils) reads.
BUILD_ENV_VARS = (
    "CC", "CXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "LDSHARED", "ARCHFLAGS",
    "FASTSMALL_FORCE_CUDA", "CUDA_HOME", "CUDA_PATH", "ROCM_HOME", "TORCH_CUDA_ARCH_LIST",
    "TORCH_DONT_CHECK_COMPILER_ABI", "_GLIBCXX_USE_CXX11_ABI", "USE_NINJA",
)
#: Module-level list assignments of setup.py recorded (readably) in the stamp.
FLAG_NAMES = ("CXX_FLAGS", "LINK_FLAGS", "NVCC_FLAGS")

EXIT_SKIP, EXIT_INCREMENTAL, EXIT_FULL = 0, 10, 11


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def source_digests(root: Path = ROOT) -> dict[str, str]:
    """SHA-256 of the content of every file under csrc/ (recursively), by path relative to root."""
    root = Path(root)
    out = {}
    for path in sorted((root / "csrc").rglob("*")):
        if path.is_file():
            out[path.relative_to(root).as_posix()] = _sha256_file(path)
    return out


def setup_flags(setup_py: Path) -> dict:
    """The compile/link flag lists as setup.py defines them ({name: list or None})."""
    try:
        tree = ast.parse(Path(setup_py).read_text())
    except (OSError, SyntaxError):
        return {name: None for name in FLAG_NAMES}
    found = {name: None for name in FLAG_NAMES}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in found:
                try:
                    found[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    found[node.targets[0].id] = ast.unparse(node.value)
    return found


def _tool_version(exe: str | None) -> str | None:
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"
    return (out.stdout or out.stderr).strip()


def compiler_info(environ=None) -> dict:
    """The C++ compiler torch.utils.cpp_extension uses ($CXX, else c++): resolved path and --version."""
    environ = os.environ if environ is None else environ
    cxx = environ.get("CXX", "c++")
    exe = shutil.which(cxx.split()[0]) if cxx.strip() else None
    return {"cxx": cxx, "path": os.path.realpath(exe) if exe else None, "version": _tool_version(exe)}


def torch_info() -> dict:
    """Facts about the installed torch that the build depends on.

    Read from torch/version.py (version, git commit, CUDA/HIP) without importing torch,
    which takes seconds; torch is imported only to find CUDA_HOME for a CUDA/ROCm torch,
    or when version.py cannot be read.
    """
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return {"version": None}
    location = os.path.realpath(list(spec.submodule_search_locations)[0])
    facts: dict = {}
    try:
        exec(compile(Path(location, "version.py").read_text(), "torch/version.py", "exec"), facts)
        info = {"version": facts["__version__"], "git": facts.get("git_version"), "cuda": facts.get("cuda"),
                "hip": facts.get("hip"), "location": location}
    except Exception:  # an unusual torch: ask torch itself
        import torch

        info = {"version": torch.__version__, "git": getattr(torch.version, "git_version", None),
                "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None), "location": location}
    if info["cuda"] is not None or info["hip"] is not None:
        from torch.utils.cpp_extension import CUDA_HOME

        nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
        info["cuda_home"] = CUDA_HOME
        info["nvcc"] = _tool_version(nvcc) if nvcc and os.path.exists(nvcc) else None
    return info


def python_info() -> dict:
    return {
        "version": sys.version,
        "implementation": sys.implementation.name,
        "prefix": os.path.realpath(sys.prefix),
        "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
        "machine": platform.machine(),
    }


def toolchain_inputs(root: Path = ROOT, torch: dict | None = None, python: dict | None = None,
                     compiler: dict | None = None, environ=None) -> dict:
    """Everything but csrc/ that affects the build. Pass torch/python/compiler to avoid probing."""
    root = Path(root)
    environ = os.environ if environ is None else environ
    setup_py = root / "setup.py"
    return {
        "setup_py": _sha256_file(setup_py) if setup_py.exists() else None,
        "flags": setup_flags(setup_py),
        "env": {name: environ.get(name) for name in BUILD_ENV_VARS},
        "torch": torch_info() if torch is None else torch,
        "python": python_info() if python is None else python,
        "compiler": compiler_info(environ) if compiler is None else compiler,
    }


def build_inputs(root: Path = ROOT, **toolchain) -> dict:
    """The stamp record before the build: sources, toolchain, and their hashes."""
    sources = source_digests(root)
    chain = toolchain_inputs(root, **toolchain)
    toolchain_hash = _sha256_json(chain)
    return {
        "schema": SCHEMA,
        "stamp": _sha256_json({"sources": sources, "toolchain": toolchain_hash}),
        "toolchain_hash": toolchain_hash,
        "sources": sources,
        "toolchain": chain,
    }


def extension_path(root: Path = ROOT, ext_suffix: str | None = None) -> Path:
    """Where the editable build puts the extension: fastsmall/_C<EXT_SUFFIX>."""
    return Path(root) / "fastsmall" / ("_C" + (ext_suffix or sysconfig.get_config_var("EXT_SUFFIX")))


def incremental_build_dir(root: Path, record: dict) -> Path:
    """The persistent ninja directory for builds with this record's toolchain."""
    return Path(root) / "build" / f"temp-fastsmall-{record['toolchain_hash'][:16]}"


def read_stamp(path: Path = STAMP_FILE) -> dict | None:
    """The recorded stamp, or None when the file is absent, unreadable or not a stamp."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        return None
    if not all(isinstance(record.get(k), str) for k in ("stamp", "toolchain_hash", "extension_sha256")):
        return None
    if not isinstance(record.get("sources"), dict):
        return None
    return record


def write_stamp(record: dict, path: Path = STAMP_FILE) -> None:
    """Write the stamp atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it 0600
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    env["FASTSMALL_REQUIRE_EXTENSION"] = "1"
    return env


_PROBE = r"""
import importlib.metadata, importlib.util, json, os, sys
out = {}
spec = importlib.util.find_spec("fastsmall")
out["package"] = os.path.dirname(os.path.realpath(spec.origin)) if spec and spec.origin else None
try:
    out["direct_url"] = json.loads(importlib.metadata.distribution("fastsmall").read_text("direct_url.json") or "null")
except Exception as exc:
    out["direct_url"] = None
if sys.argv[1] == "load" and out["package"]:
    try:
        import fastsmall._C
        out["extension"] = os.path.realpath(fastsmall._C.__file__)
    except BaseException as exc:
        out["load_error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[-1][:300]
print(json.dumps(out))
"""


def probe_install(python: str = sys.executable, load: bool = True) -> dict:
    """Run in a fresh interpreter outside the repository: where `fastsmall` is installed and,
    if load, whether fastsmall._C imports (with FASTSMALL_REQUIRE_EXTENSION=1)."""
    with tempfile.TemporaryDirectory() as cwd:
        try:
            out = subprocess.run([python, "-c", _PROBE, "load" if load else "locate"], capture_output=True,
                                 text=True, cwd=cwd, env=_clean_env(), timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            return {"error": str(exc)}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1]}


def install_problem(probe: dict, root: Path = ROOT) -> str | None:
    """Why the installed fastsmall is not an editable install of this checkout (None if it is)."""
    root = Path(os.path.realpath(root))
    if probe.get("error"):
        return f"could not check the installed fastsmall ({probe['error']})"
    if probe.get("package") != str(root / "fastsmall"):
        return f"the installed fastsmall is at {probe.get('package')}, not this checkout"
    url = probe.get("direct_url") or {}
    if not (url.get("dir_info") or {}).get("editable"):
        return "fastsmall is not installed as an editable install"
    location = url.get("url", "")
    if not location.startswith("file://") or os.path.realpath(location[len("file://"):]) != str(root):
        return f"the editable install points at {location}, not this checkout"
    return None


def load_problem(probe: dict, so_path: Path) -> str | None:
    """Why the probe could not load this checkout's extension (None if it did)."""
    if probe.get("load_error"):
        return f"import fastsmall._C fails ({probe['load_error']})"
    if probe.get("extension") != os.path.realpath(so_path):
        return f"fastsmall._C loads from {probe.get('extension')}, not {so_path}"
    return None


def up_to_date(current: dict, stamp: dict | None, so_path: Path, probe: dict | None = None,
               root: Path = ROOT) -> tuple[bool, str]:
    """(True, "") when the build can be skipped, else (False, why). probe=None skips the install
    and import checks (the file checks alone, for tests); setup.sh always passes one."""
    if stamp is None:
        return False, "no valid build stamp"
    if stamp["stamp"] != current["stamp"]:
        return False, describe_change(stamp, current)
    so_path = Path(so_path)
    if not so_path.is_file():
        return False, f"{so_path.name} is missing"
    if _sha256_file(so_path) != stamp["extension_sha256"]:
        return False, f"{so_path.name} is not the file the recorded build produced"
    if probe is not None:
        why = install_problem(probe, root) or load_problem(probe, so_path)
        if why:
            return False, why
    return True, ""


def describe_change(old: dict, new: dict) -> str:
    """A short reason naming what changed between two records."""
    if old.get("toolchain_hash") != new.get("toolchain_hash"):
        a, b = old.get("toolchain") or {}, new.get("toolchain") or {}
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return "build toolchain changed: " + (", ".join(keys) or "?")
    a, b = old.get("sources") or {}, new.get("sources") or {}
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"sources changed: {shown}" if changed else "stamp differs"


def changed_sources(old: dict, new: dict) -> list[str]:
    """Files under csrc/ whose content differs from (or is missing in) the old record."""
    a = old.get("sources") or {}
    return sorted(k for k, v in (new.get("sources") or {}).items() if a.get(k) != v)


def prepare_incremental(root: Path, stamp: dict, current: dict) -> Path:
    """Get the persistent ninja directory ready for building `current`'s sources.

    ninja rebuilds an object when a source (or a header its depfile lists) is newer than
    it, so a content change that kept an old mtime (cp -p, tar, a failed build followed by
    a restore) could be missed. Every file whose content differs from what the stamp or
    the directory's last build attempt (sources.json) saw gets its mtime bumped first; the
    attempt is recorded before the build starts. A directory without that record was not
    made by setup.sh and is emptied.
    """
    build_dir = incremental_build_dir(root, current)
    attempt_file = build_dir / "sources.json"
    try:
        attempted = json.loads(attempt_file.read_text())["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        attempted = None
        shutil.rmtree(build_dir, ignore_errors=True)
    touched = set(changed_sources(stamp, current))
    if attempted is not None:
        touched |= set(changed_sources({"sources": attempted}, current))
    for rel in sorted(touched):
        os.utime(Path(root) / rel)
    write_stamp({"sources": current["sources"]}, attempt_file)
    return build_dir


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def plan(root: Path = ROOT, stamp_path: Path = STAMP_FILE, pending: Path | None = None) -> int:
    """Decide skip / incremental / full; print one line; save the pre-build record to `pending`."""
    root = Path(root)
    current = build_inputs(root)
    so_path = extension_path(root)
    stamp = read_stamp(stamp_path)
    if pending is not None:
        write_stamp(current, pending)
    if _flag("FASTSMALL_REBUILD"):
        print("fastsmall extension: FASTSMALL_REBUILD=1, full build (pip install -e .)", flush=True)
        return EXIT_FULL
    # The cheap file checks first, then one interpreter that locates and imports the package.
    ok, why = up_to_date(current, stamp, so_path, probe=None, root=root)
    probe = probe_install(load=ok) if stamp is not None else {}
    if ok:
        ok, why = up_to_date(current, stamp, so_path, probe=probe, root=root)
    if ok:
        print(SKIP_LINE, flush=True)
        return EXIT_SKIP
    if (stamp is not None and stamp["toolchain_hash"] == current["toolchain_hash"]
            and install_problem(probe, root) is None):
        prepare_incremental(root, stamp, current)
        print(f"fastsmall extension: {why}; incremental build (setup.py build_ext --inplace, "
              f"{incremental_build_dir(root, current).relative_to(root)})", flush=True)
        return EXIT_INCREMENTAL
    print(f"fastsmall extension: {why}; full build (pip install -e .)", flush=True)
    return EXIT_FULL


def record(pending: Path, root: Path = ROOT, stamp_path: Path = STAMP_FILE) -> int:
    """After a successful build: check the install and the extension, then write the stamp."""
    root = Path(root)
    current = read_json(pending)
    so_path = extension_path(root)
    probe = probe_install(load=True)
    why = None if so_path.is_file() else f"{so_path} was not built"
    why = why or install_problem(probe, root) or load_problem(probe, so_path)
    if why:
        print(f"fastsmall extension: build finished but {why}; no build stamp written", file=sys.stderr)
        return 1
    current["extension"] = so_path.relative_to(root).as_posix()
    current["extension_sha256"] = _sha256_file(so_path)
    write_stamp(current, stamp_path)
    # Objects built with another toolchain can never be reused (the directory name is its hash).
    keep = incremental_build_dir(root, current).name
    for old in (root / "build").glob("temp-fastsmall-*"):
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
    return 0


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="decide skip (exit 0) / incremental (10) / full (11)")
    p.add_argument("--pending", type=Path, help="save the pre-build record here")
    r = sub.add_parser("record", help="after the build: check it and write the stamp")
    r.add_argument("pending", type=Path)
    b = sub.add_parser("build-dir", help="print the persistent incremental build directory")
    b.add_argument("pending", type=Path)
    args = parser.parse_args(argv)
    if args.command == "plan":
        return plan(pending=args.pending)
    if args.command == "record":
        return record(args.pending)
    print(incremental_build_dir(ROOT, read_json(args.pending)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
