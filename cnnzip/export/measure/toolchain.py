"""Compiling and running generated C: on the host (gcc) and on a Cortex-M4 (arm-none-eabi-gcc,
run on qemu-system-arm's emulated MPS2-AN386 board with ``-icount shift=0``, so that time is a
count of executed instructions, the same on every run).

The benchmark harness (``harness/bench_main.c``) reads inputs from ``in.bin`` and writes the
logits, each inference's time and, when built with profiling, each step's time; on the
Cortex-M4 through semihosting (``harness/m4_startup.c``, ``harness/m4.ld``).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnzip.errors import CnnzipError

RUNTIME = Path(__file__).parent / "harness"
CFLAGS = ("-O2", "-std=c99", "-Wall", "-Werror")
M4_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
M4_LINK = ("-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs")
QEMU = ("qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none",
        "-semihosting-config", "enable=on,target=native", "-icount", "shift=0")
TARGETS = ("host", "cortex-m4")
INSTRUCTIONS_PER_TICK = 40  # 25 MHz SysTick, 1 ns per instruction under -icount shift=0
M4_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise CnnzipError(f"{name} is not on PATH; {hint}")
    return found


def compiler(target: str = "host") -> str:
    if target == "host":
        return shutil.which("gcc") or _tool("cc", "scripts/setup.sh installs gcc")
    if target == "cortex-m4":
        return _tool("arm-none-eabi-gcc", f"install the Debian packages {M4_PACKAGES} "
                     "(scripts/setup.sh --mcu does)")
    raise CnnzipError(f"target {target!r}: choose one of {', '.join(TARGETS)}")


def compile_c(folder: Path, sources: list[str], output: str | Path, *,
              object_only: bool = False, target: str = "host",
              defines: tuple[str, ...] = (), libs: tuple[str, ...] = ()) -> Path:
    """The C compiler of ``target`` with :data:`CFLAGS` on ``sources`` in ``folder``: an
    executable (or, with ``object_only``, one object file) at ``output``.

    Raises:
        CnnzipError: no compiler, or one that refuses the sources (its first error line).
    """
    cc = compiler(target)
    flags = list(CFLAGS) + [f"-D{d}" for d in defines]
    if target == "cortex-m4":
        flags += M4_FLAGS
        if not object_only:
            flags += [*M4_LINK, "-T", str(RUNTIME / "m4.ld")]
    output = Path(output).resolve()
    done = subprocess.run([cc, *flags, *(["-c"] if object_only else []), *sources, "-o",
                           str(output), *([] if object_only else libs)], cwd=folder,
                          capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no message)"]
        raise CnnzipError(f"{folder}: {Path(cc).name} failed: {lines[0]}")
    return output


def sections(path: Path, target: str = "host") -> dict[str, int]:
    """Bytes of an object or executable's sections (``size -A``): ``text`` (code), ``rodata``
    (constant data), ``data`` and ``bss``; ``flash`` = text + rodata + data, ``ram`` = data +
    bss (the stack aside)."""
    size = _tool("arm-none-eabi-size", f"install {M4_PACKAGES}") if target == "cortex-m4" \
        else _tool("size", "install binutils")
    table = subprocess.run([size, "-A", str(path)], capture_output=True, text=True,
                           check=True).stdout
    sizes = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            for key in sizes:
                if parts[0] == f".{key}" or parts[0].startswith(f".{key}."):
                    sizes[key] += int(parts[1])
    return {**sizes, "flash": sizes["text"] + sizes["rodata"] + sizes["data"],
            "ram": sizes["data"] + sizes["bss"]}


def model_sections(folder: Path, scratch: Path, target: str = "host") -> dict[str, int]:
    """:func:`sections` of ``folder/model.c`` alone, compiled for ``target`` in ``scratch``."""
    obj = compile_c(folder, ["model.c"], scratch / f"model-{target}.o", object_only=True,
                    target=target)
    return sections(obj, target)


@dataclass(frozen=True)
class Run:
    """What the harness wrote: per input its logits and its time (host: ns; Cortex-M4: SysTick
    ticks of 40 instructions), and per step the time summed over every input."""

    logits: np.ndarray
    times: np.ndarray
    steps: np.ndarray


def build(folder: Path, target: str, *, profile: bool = False, extra: list[str] | tuple = (),
          libs: tuple[str, ...] = ()) -> Path:
    """The benchmark harness with ``folder/model.c`` for ``target``: ``folder/bench-TARGET``
    (with ``profile``, ``bench-TARGET-profile``); the runtime's files are copied into
    ``folder``."""
    for name in ("cnz_io.h", "bench_main.c", "host_io.c", "m4_startup.c"):
        shutil.copy(RUNTIME / name, folder / name)
    io = "host_io.c" if target == "host" else "m4_startup.c"
    suffix = "-profile" if profile else ""
    return compile_c(folder, ["model.c", *extra, "bench_main.c", io],
                     folder / f"bench-{target}{suffix}", target=target, libs=libs,
                     defines=("CNZ_PROFILE(s)=cnz_profile(s)",) if profile else ())


def run(binary: Path, target: str, inputs: np.ndarray, logit_dtype: str,
        classes: int, *, timeout: float = 600) -> Run:
    """``binary`` (from :func:`build`) on ``inputs`` (one row per input, already in the model's
    input type), in the binary's folder.

    Raises:
        CnnzipError: the emulator is missing, the run fails or times out.
    """
    folder = binary.parent
    (folder / "in.bin").write_bytes(np.ascontiguousarray(inputs).tobytes())
    for name in ("out.bin", "time.bin", "steps.bin"):
        (folder / name).unlink(missing_ok=True)
    if target == "cortex-m4":
        command = [_tool(QEMU[0], f"install {M4_PACKAGES}"), *QEMU[1:], "-kernel", str(binary)]
    else:
        command = [str(binary)]
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CnnzipError(f"{binary.name}: no result within {timeout:.0f} s") from None
    if done.returncode or not (folder / "steps.bin").exists():
        message = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise CnnzipError(f"{binary.name} failed (exit {done.returncode}): {message[:200]}")
    logits = np.frombuffer((folder / "out.bin").read_bytes(), logit_dtype).reshape(-1, classes)
    if len(logits) != len(inputs):
        raise CnnzipError(f"{binary.name}: {len(logits)} results for {len(inputs)} inputs")
    return Run(logits, np.frombuffer((folder / "time.bin").read_bytes(), "<u4"),
               np.frombuffer((folder / "steps.bin").read_bytes(), "<u4"))


def run_exported(folder: Path, images, work: Path) -> np.ndarray:
    """The C that ``cnnzip export --format c`` wrote in ``folder`` (model.c, main.c), compiled
    for the host in ``work`` and run on ``images`` (N, C, H, W 8-bit pixels, written as one IDX
    file): the class it predicts for each."""
    infer = compile_c(folder, ["model.c", "main.c"], work / "infer")
    idx = work / "images-idx3-ubyte"
    n, _, h, w = images.shape
    header = np.array([0x803, n, h, w], ">u4").tobytes()
    idx.write_bytes(header + np.asarray(images).astype(np.uint8).tobytes())
    run = subprocess.run([str(infer), str(idx)], capture_output=True, check=True, text=True)
    return np.array([int(v) for v in run.stdout.split()])
