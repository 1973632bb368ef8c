"""Does `pip install sevlm_jax` find a wheel for every dependency on Windows, macOS arm64 and
Linux aarch64? Builds the wheel and resolves its install for each platform with pip, without
installing anything; fails (exit 1) naming the platforms that do not resolve.

  python .ci/platforms.py                          # build the wheel, resolve every platform
  python .ci/platforms.py win_amd64                # only these platforms
  python .ci/platforms.py --wheel dist/sevlm_jax-0.1.0-py3-none-any.whl

Needs the package registry (CI reaches it; tests do not). For each platform it prints what pip
would install and which of the package's requirements its environment markers leave out there.

What this proves and what not: pip resolves, with wheels only (`--only-binary=:all:`: what a user
without compilers gets), the versions it would install there; nothing is run on those platforms.
pip's `--platform` picks wheels but evaluates environment markers (`sys_platform`,
`platform_system`, ...) for the machine pip runs on (pypa/pip#6117, #10050), so a plain run would
ask for Linux-only packages on Windows (orbax-checkpoint's uvloop) and ignore setup.cfg's own
markers. Each resolution therefore runs pip in a child process whose marker environment is the
target's.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.11"


def _markers(os_name, sys_platform, system, machine, release) -> dict[str, str]:
  """A PEP 508 marker environment of CPython PYTHON_VERSION on one platform."""
  full = f"{PYTHON_VERSION}.9"
  return {"os_name": os_name, "sys_platform": sys_platform, "platform_system": system,
          "platform_machine": machine, "platform_release": release, "platform_version": release,
          "python_version": PYTHON_VERSION, "python_full_version": full,
          "implementation_name": "cpython", "implementation_version": full,
          "platform_python_implementation": "CPython"}


def _manylinux(arch: str, glibc_minor: int) -> list[str]:
  """The wheel platform tags a Linux with glibc 2.<glibc_minor> accepts (pip expands none)."""
  return [f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 16, -1)] + [f"manylinux2014_{arch}"]


# name -> (pip --platform tags, marker environment)
PLATFORMS = {
    "win_amd64": (["win_amd64"], _markers("nt", "win32", "Windows", "AMD64", "10")),
    "macosx_14_0_arm64": (["macosx_14_0_arm64"],  # pip expands it to every older macOS 11+ tag
                          _markers("posix", "darwin", "Darwin", "arm64", "23.0.0")),
    # glibc 2.28: Debian 10, RHEL 8, Ubuntu 18.10 and later.
    "manylinux_2_28_aarch64": (_manylinux("aarch64", 28),
                               _markers("posix", "linux", "Linux", "aarch64", "6.1.0")),
}

# Runs pip with the target's marker environment in place of this machine's.
_PIP_WITH_MARKERS = """
import json, sys
from pip._vendor.packaging import markers
target = json.loads(sys.argv[1])
markers.default_environment = lambda: dict(target)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def build_wheel(out: pathlib.Path) -> pathlib.Path:
  """The wheel of this checkout (its build's warnings shown only if it fails)."""
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
                        capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    sys.exit(f"building the wheel failed:\n{proc.stdout}{proc.stderr}")
  (wheel,) = out.glob("sevlm_jax-*.whl")
  return wheel


def resolve(wheel: pathlib.Path, platform: str, scratch: pathlib.Path):
  """(pip's install report, None) or (None, pip's output) where it does not resolve."""
  tags, markers = PLATFORMS[platform]
  report = scratch / f"{platform}.json"
  cmd = [sys.executable, "-c", _PIP_WITH_MARKERS, json.dumps(markers), "install", "--dry-run",
         "--ignore-installed", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
         "--target", str(scratch / platform), "--quiet", "--report", str(report)]
  cmd += [arg for tag in tags for arg in ("--platform", tag)]
  proc = subprocess.run(cmd + [str(wheel)], capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    return None, proc.stdout + proc.stderr
  return json.loads(report.read_text()), None


def _canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def summary(report: dict) -> tuple[list[str], list[str], list[str]]:
  """(name==version of each resolved package, the files that are not wheels, the package's
  requirements that the platform's markers leave out)."""
  items = report["install"]
  resolved = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items)
  not_wheels = [i["download_info"]["url"] for i in items
                if not i["download_info"]["url"].endswith(".whl")]
  names = {_canonical(i["metadata"]["name"]) for i in items}
  (ours,) = [i for i in items if _canonical(i["metadata"]["name"]) == "sevlm-jax"]
  left_out = [r for r in ours["metadata"].get("requires_dist", []) if ";" in r and "extra ==" not in r
              and _canonical(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) not in names]
  return resolved, not_wheels, left_out


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("platforms", nargs="*", metavar="PLATFORM",
                      help=f"default: all of {', '.join(PLATFORMS)}")
  parser.add_argument("--wheel", type=pathlib.Path, help="a built wheel (default: build one)")
  args = parser.parse_args()
  unknown = sorted(set(args.platforms) - set(PLATFORMS))
  if unknown:
    parser.error(f"unknown platform {', '.join(unknown)}; choose from {', '.join(PLATFORMS)}")
  failed = []
  with tempfile.TemporaryDirectory() as tmp:
    scratch = pathlib.Path(tmp)
    wheel = args.wheel or build_wheel(scratch / "wheel")
    print(f"resolving {wheel.name} for CPython {PYTHON_VERSION}, wheels only (pip {_pip_version()})")
    for platform in args.platforms or PLATFORMS:
      start = time.monotonic()
      report, error = resolve(wheel, platform, scratch)
      took = time.monotonic() - start
      if report is None:
        failed.append(platform)
        print(f"\n== {platform}: DOES NOT RESOLVE ({took:.0f} s)\n{error.rstrip()}")
        continue
      resolved, not_wheels, left_out = summary(report)
      if not_wheels:  # cannot happen with --only-binary=:all:; guards the check itself
        failed.append(platform)
      print(f"\n== {platform}: resolves, {len(resolved)} packages ({took:.0f} s)")
      print(f"   left out by environment markers: {', '.join(left_out) or 'nothing'}")
      for line in _wrap(resolved):
        print(f"   {line}")
      for url in not_wheels:
        print(f"   NOT A WHEEL: {url}")
  if failed:
    print(f"\nFAILED: {', '.join(failed)}: pip cannot install sevlm_jax there from wheels", file=sys.stderr)
    return 1
  return 0


def _pip_version() -> str:
  import pip  # pylint: disable=import-outside-toplevel
  return pip.__version__


def _wrap(words: list[str], width: int = 96) -> list[str]:
  lines, line = [], ""
  for word in words:
    if line and len(line) + 1 + len(word) > width:
      lines.append(line)
      line = ""
    line = f"{line} {word}" if line else word
  return lines + ([line] if line else [])


if __name__ == "__main__":
  sys.exit(main())
