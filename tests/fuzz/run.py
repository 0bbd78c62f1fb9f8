"""Run the fuzz targets for a bounded time and say exactly what ran.

    python -m tests.fuzz.run [--seconds 120] [--targets line_decoder,verify]
                             [--engine auto|atheris|hypothesis] [--out DIR]

The budget is shared by the targets, one after the other (the machine is small).
With atheris (coverage-guided libFuzzer) each target runs in its own process;
without it, or with ``--engine hypothesis``, Hypothesis drives the same targets
in this process, from the same seeds. Exit 1 on a crash, or when any target
executed nothing: a fuzz step never passes without having fuzzed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SEEDS = HERE / "corpus"
DICTIONARY = HERE / "fuzz.dict"
MAX_LEN = {"line_decoder": 16384, "verify": 65536, "validate": 4096, "manifest": 32768}
OVERHEAD_SECONDS = 12  # building the package and starting each process


@dataclass
class Result:
    target: str
    engine: str
    seconds: float
    executions: int
    crash: str | None = None  # what crashed, where the input is
    known: tuple[str, ...] = ()  # already-reported crash kinds met (tests/fuzz/known.py)


def _quiet_environment() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("FLAGTRAIL_") and not k.startswith("FLAGTRAIL_TEST_"))
        or k == "FLAGTRAIL_FUZZ_STRICT"
    }
    env.pop("AUDIT_SIGNING_KEY_PATH", None)
    env["FLAGTRAIL_FUZZ_CHILD"] = "1"  # print each known issue met, once
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def build_package(work: Path) -> tuple[Path, Path]:
    """A fresh genuine export made with today's code, and the key that signed it."""
    from tests.fuzz.package import make_package

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        package = make_package(work / "made")
    return package, work / "made" / "trusted-public.pem"


def write_seeds(package: Path, corpus: Path) -> dict[str, Path]:
    """Seed corpora: the committed ones (tests/fuzz/corpus) plus seeds cut from the
    fresh package, so that the seeds always have today's record and manifest format."""
    from tests.fuzz.targets import MANIFEST_SEPARATOR

    export = next(package.glob("*.jsonl")).read_bytes()
    manifest = next(package.glob("*.manifest.json")).read_bytes()
    lines = export.splitlines()
    fresh: dict[str, list[bytes]] = {
        "line_decoder": [
            *lines,
            lines[0] + b"\r\n",
            json.dumps(json.loads(lines[-1])).encode(),  # another tool's layout
        ],
        "verify": [export, export + MANIFEST_SEPARATOR + manifest, b"\n".join(lines[:2])],
        "validate": [bytes(range(256)), bytes(64), b"\x07" * 128],
        "manifest": [manifest, manifest.replace(b'"record_count": ', b'"record_count": 1')],
        "selftest_crash": [b"x"],
    }
    dirs = {}
    for target, seeds in fresh.items():
        folder = corpus / "seeds" / target
        if (SEEDS / target).is_dir():
            shutil.copytree(SEEDS / target, folder)
        folder.mkdir(parents=True, exist_ok=True)
        for n, seed in enumerate(seeds):
            (folder / f"fresh-{n}").write_bytes(seed)
        dirs[target] = folder
    return dirs


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(
    target: str,
    seconds: int,
    limit: float,
    package: Path,
    key: Path,
    seeds: Path,
    corpus_root: Path,
    out: Path,
    seed: int = 0,
) -> Result:
    """One libFuzzer process for ``seconds``; killed (a failure) past ``limit``."""
    corpus = corpus_root / target  # new inputs land here; seeds stay as they are
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = out / target
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in artifacts.glob("*-*"):  # inputs saved by an earlier run
        old.unlink()
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.atheris_main",
        target,
        str(package),
        str(key),
        f"-max_total_time={seconds}",
        f"-seed={seed}",  # 0: libFuzzer picks one (and prints it)
        f"-max_len={MAX_LEN.get(target, 4096)}",
        "-timeout=20",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        f"-dict={DICTIONARY}",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
        str(seeds),
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            cwd=package.parent,
            env=_quiet_environment(),
            capture_output=True,
            timeout=max(1.0, limit),
        )
        log, returncode = (done.stderr + done.stdout).decode(errors="replace"), done.returncode
        overrun = False
    except subprocess.TimeoutExpired as exc:
        log, returncode, overrun = (exc.stderr or b"").decode(errors="replace"), -1, True
    elapsed = time.monotonic() - started
    (artifacts / "fuzzer.log").write_text(log)
    runs = re.findall(r"stat::number_of_executed_units: (\d+)", log) or re.findall(
        r"^#(\d+)", log, re.MULTILINE
    )
    executions = int(runs[-1]) if runs else 0
    met = tuple(sorted(set(re.findall(r"^fuzz-known: (\S+)", log, re.MULTILINE))))
    result = Result(target, "atheris", elapsed, executions, known=met)
    if overrun:
        result.crash = f"killed after {limit:.0f} s: over the time budget (log: {artifacts})"
    elif returncode != 0:
        inputs = sorted(artifacts.glob("crash-*")) + sorted(artifacts.glob("timeout-*"))
        inputs += sorted(artifacts.glob("oom-*"))
        where = str(inputs[-1]) if inputs else "no input saved"
        cause = _cause(log)
        result.crash = f"{cause} (input: {where}; log: {artifacts / 'fuzzer.log'})"
    return result


def _cause(log: str) -> str:
    """The last line of the Python traceback, or libFuzzer's own reason."""
    lines = log.splitlines()
    for n, line in enumerate(lines):
        if "Uncaught Python exception" in line:
            tail = [x for x in lines[n:] if x and not x.startswith(("  ", "Traceback"))]
            return tail[1] if len(tail) > 1 else line
    found = re.findall(r"==\d+== ERROR: libFuzzer: (.*)", log)
    return found[-1] if found else "the fuzzer exited with an error"


def run_hypothesis(target: str, seconds: int, seeds: Path, out: Path, seed: int = 0) -> Result:
    """The same target driven by Hypothesis: seeds mutated byte-wise, and fresh bytes."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from tests.fuzz.known import hits
    from tests.fuzz.mutators import STRUCTURED
    from tests.fuzz.targets import SELF_TEST, TARGETS

    func = {**TARGETS, **SELF_TEST}[target]
    corpus = [p.read_bytes() for p in sorted(seeds.iterdir())]
    count = 0

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        seed = draw(st.sampled_from(corpus))
        if target in STRUCTURED and draw(st.booleans()):
            rng = random.Random(draw(st.integers(0, 2**32)))
            for _ in range(draw(st.integers(1, 4))):
                seed = STRUCTURED[target](seed, rng)
            return seed[: MAX_LEN.get(target, 4096)]
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data)))
            edit = draw(st.sampled_from(["flip", "insert", "delete", "splice"]))
            if edit == "flip" and at < len(data):
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif edit == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            elif edit == "delete":
                del data[at : at + draw(st.integers(1, 64))]
            else:
                other = draw(st.sampled_from(corpus))
                data[at:] = other[draw(st.integers(0, len(other))) :]
        return bytes(data[: MAX_LEN.get(target, 4096)])

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(mutated(), st.binary(max_size=512)))
    def fuzz(data: bytes) -> None:
        nonlocal count
        count += 1
        try:
            func(data)
        except BaseException:
            (out / target).mkdir(parents=True, exist_ok=True)
            (out / target / "crash-hypothesis").write_bytes(data)
            raise

    started = time.monotonic()
    result = Result(target, "hypothesis", 0.0, 0)
    rounds = 0
    while time.monotonic() - started < seconds:
        rounds += 1
        try:
            # a fixed seed makes each round, and so the whole run, repeatable
            (hypothesis_seed(seed * 1_000_003 + rounds)(fuzz) if seed else fuzz)()
        except Exception as exc:
            result.crash = f"{exc!r:.300} (input: {out / target / 'crash-hypothesis'})"
            break
    result.seconds, result.executions = time.monotonic() - started, count
    result.known = tuple(sorted(hits))
    hits.clear()
    return result


def main(argv: list[str] | None = None) -> int:
    from tests.fuzz.targets import SELF_TEST, TARGETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=120, help="budget for all targets")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    parser.add_argument("--out", default=str(REPO / "fuzz-artifacts"), help="crash inputs")
    parser.add_argument("--corpus", help="keep the inputs found here (default: thrown away)")
    parser.add_argument(
        "--seed",
        type=int,
        default=int(os.environ.get("FLAGTRAIL_FUZZ_SEED", "0")),
        help="fixed random seed, so a gate run explores the same inputs every time "
        "(env FLAGTRAIL_FUZZ_SEED; 0, the default: a new seed each run)",
    )
    parser.add_argument(
        "--save-seeds", action="store_true", help="write fresh seeds to tests/fuzz/corpus, exit"
    )
    args = parser.parse_args(argv)
    names = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(names) - set(TARGETS) - set(SELF_TEST))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    engine = args.engine
    if engine in ("auto", "atheris") and not atheris_available():
        if engine == "atheris":
            print("fuzz: atheris is not installed (pip install atheris)", file=sys.stderr)
            return 1
        print("fuzz: atheris is not installed: falling back to Hypothesis-driven fuzzing")
        engine = "hypothesis"
    elif engine == "auto":
        engine = "atheris"
    each = max(5, (args.seconds - OVERHEAD_SECONDS) // len(names))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    deadline = time.monotonic() + args.seconds + 5
    with tempfile.TemporaryDirectory(prefix="flagtrail-fuzz-") as tmp:
        work = Path(tmp)
        package, key = build_package(work)
        seeds = write_seeds(package, work)
        if args.save_seeds:
            for name, folder in seeds.items():
                if name not in TARGETS:
                    continue
                for seed in folder.glob("fresh-*"):
                    (SEEDS / name).mkdir(parents=True, exist_ok=True)
                    shutil.copy(seed, SEEDS / name / seed.name.replace("fresh", "export"))
            print(f"fuzz: seeds written to {SEEDS}")
            return 0
        seed_note = f", seed {args.seed}" if args.seed else ", random seed"
        print(
            f"fuzz: {engine}, {len(names)} targets x {each} s (budget {args.seconds} s{seed_note})"
        )
        corpus = Path(args.corpus) if args.corpus else work / "corpus"
        if engine == "hypothesis":
            from tests.fuzz.targets import use_package

            use_package(package, key)
        for n, name in enumerate(names):
            if engine == "atheris":
                # whatever the earlier targets took, the whole run ends by the deadline
                left = deadline - time.monotonic()
                seconds = max(1, min(each, int(left / (len(names) - n)) - 4))
                result = run_atheris(
                    name, seconds, left, package, key, seeds[name], corpus, out, args.seed
                )
            else:
                result = run_hypothesis(name, each, seeds[name], out, args.seed)
            results.append(result)
            status = "CRASH " + result.crash if result.crash else "ok"
            print(
                f"fuzz: {name:<13} {result.engine:<10} {result.seconds:6.1f} s "
                f"{result.executions:>10,} executions  {status}",
                flush=True,
            )
            for kind in result.known:
                print(f"fuzz:   known issue met (reported, skipped): {kind}")
    crashed = [r for r in results if r.crash]
    idle = [r for r in results if r.executions == 0]
    total = sum(r.executions for r in results)
    seconds = sum(r.seconds for r in results)
    for r in idle:
        print(f"fuzz: {r.target} executed nothing: the fuzzer did not run", file=sys.stderr)
    if crashed:
        print(
            f"fuzz: {len(crashed)} target(s) crashed; reproduce with "
            "`python -m tests.fuzz.repro TARGET INPUT` and make the input a regression test",
            file=sys.stderr,
        )
    verdict = "FAILED" if crashed or idle else "ok"
    print(f"fuzz: {verdict}: {total:,} executions in {seconds:.0f} s ({engine})")
    return 1 if crashed or idle else 0


if __name__ == "__main__":
    sys.exit(main())
