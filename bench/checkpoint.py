"""Checkpoint save and load: CheckpointStore against torch.save / torch.load, before and after.

    .venv/bin/python bench/checkpoint.py [--dir /work/bench-tmp] [--cases minilm,big]
        [--repeats-minilm 5] [--repeats-big 3] [--big-gib 1.0] [--big-optimizer] [--no-before]

Cases: ``minilm`` is the real trial state (MiniLM weights plus AdamW state after one step,
packed as the trial does: model state dict, ``flatten_state`` of the optimizer, RNG state);
``big`` is a random float32 MLP of ``--big-gib`` GiB of weights (optimizer state only with
``--big-optimizer``). Each repeat runs every method once, in the same order; every timed
operation starts after ``sync`` and a page-cache drop (``/proc/sys/vm/drop_caches``, else
``posix_fadvise(DONTNEED)`` on the files), so saves start clean and cold loads read the
disk. Warm loads read the files once, untimed, first. "before" is the previous
implementation (``safetensors.torch.save`` into bytes, whole-file reads), patched into the
same CheckpointStore. Peak extra RSS is VmHWM after resetting it (``/proc/self/clear_refs``),
else a 1 ms psutil sampler, minus RSS before the operation; a load's figure includes the
loaded tensors themselves. Prints a table and writes ``bench/results/checkpoint.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import hashlib
import json
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchenv
import psutil
import safetensors
import safetensors.torch
import torch

from leanhpo.checkpoints import CheckpointStore, flatten_state
from leanhpo.checkpoints import manifest as manifest_module
from leanhpo.checkpoints import store as store_module

RESULTS = Path(__file__).resolve().parent / "results" / "checkpoint.json"
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
CLEAR_REFS = Path("/proc/self/clear_refs")
MIB = 1024 * 1024
MLP_WIDTH = 8192
SAVE_METHODS = ("after", "before", "torch", "torch_fsync")
LOAD_METHODS = ("after", "before", "torch")


# -- the states --------------------------------------------------------------------------


def minilm_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """(groups for CheckpointStore, state dicts for torch.save) of MiniLM after one step."""
    from leanhpo.models import load_encoder

    encoder, _, _ = load_encoder("minilm")
    return _after_one_step(encoder, lambda: encoder(input_ids=torch.randint(0, 1000, (4, 32))))


def big_state(gib: float, with_optimizer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    layers = max(1, round(gib * 2**30 / (MLP_WIDTH * MLP_WIDTH * 4)))
    model = torch.nn.Sequential(
        *[torch.nn.Linear(MLP_WIDTH, MLP_WIDTH, device="meta") for _ in range(layers)]
    ).to_empty(device="cpu")
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
    if not with_optimizer:
        return pack(model, None)
    return _after_one_step(model, lambda: model(torch.randn(2, MLP_WIDTH)))


def _after_one_step(model: torch.nn.Module, forward: Callable[[], Any]) -> tuple[dict, dict]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    output = forward()
    tensor = output.last_hidden_state if hasattr(output, "last_hidden_state") else output
    tensor.float().pow(2).mean().backward()
    optimizer.step()
    return pack(model, optimizer)


def pack(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict]:
    """As leanhpo.trial.state.pack: live CPU tensors for the model, flattened optimizer/RNG."""
    model_tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    groups: dict[str, Any] = {"model": model_tensors}
    plain: dict[str, Any] = {"model": model.state_dict()}
    meta: dict[str, Any] = {}
    if optimizer is not None:
        groups["optimizer"], meta["optimizer_skeleton"] = flatten_state(optimizer.state_dict())
        plain["optimizer"] = optimizer.state_dict()
    groups["rng"], meta["rng_skeleton"] = flatten_state({"torch": torch.get_rng_state()})
    plain["rng"] = torch.get_rng_state()
    return {"groups": groups, "meta": meta}, plain


# -- "before": the previous implementation, patched into the same store ----------------


def _before_write_contents(tmp: Path, epoch: int, groups: dict, meta_bytes: bytes) -> tuple:
    files = {}
    for group, tensors in groups.items():
        prepared = {key: value.detach().contiguous() for key, value in tensors.items()}
        data = safetensors.torch.save(prepared)
        files[group + ".safetensors"] = manifest_module.write_hashed(
            tmp / (group + ".safetensors"), data
        )
        del data
    files["meta.json"] = manifest_module.write_hashed(tmp / "meta.json", meta_bytes)
    manifest = {
        "format": manifest_module.CHECKPOINT_FORMAT,
        "epoch": epoch,
        "files": files,
        "created_at": datetime.now(UTC).isoformat(),
    }
    raw = json.dumps(manifest, indent=2).encode("utf-8")
    manifest_module.write_hashed(tmp / "MANIFEST.json", raw)
    return raw, sum(entry["bytes"] for entry in files.values()) + len(raw)


def _before_read_checked(path: Path, name: str, entry: dict, epoch: int) -> bytes:
    data = path.read_bytes()
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise manifest_module.CorruptCheckpointError(epoch, f"{name} does not match")
    return data


@contextlib.contextmanager
def before_implementation() -> Iterator[None]:
    patches = {
        "write_contents": _before_write_contents,
        "read_checked": _before_read_checked,
        "parse_meta": lambda data, epoch: json.loads(data),
        "parse_tensors": lambda data, name, epoch, where: safetensors.torch.load(data),
    }
    saved = {name: getattr(store_module, name) for name in patches}
    for name, replacement in patches.items():
        setattr(store_module, name, replacement)
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(store_module, name, original)


# -- measuring ---------------------------------------------------------------------------


class Probe:
    """Page-cache drop and peak-RSS measurement, each with the best method this host allows."""

    def __init__(self) -> None:
        self.cache_method = "drop_caches" if _try_write(DROP_CACHES, "3\n") else "fadvise"
        self.rss_method = "VmHWM" if _try_write(CLEAR_REFS, "5\n") else "psutil-sampler-1ms"

    def drop_cache(self, folder: Path) -> None:
        os.sync()
        if self.cache_method == "drop_caches":
            DROP_CACHES.write_text("3\n")
            return
        for path in folder.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)

    def measure(self, operation: Callable[[], Any]) -> tuple[float, int]:
        """(seconds, peak extra RSS bytes) of ``operation``; its result is dropped after."""
        gc.collect()
        _malloc_trim()  # hand freed heap back, so earlier results do not hide new growth
        process = psutil.Process()
        baseline = process.memory_info().rss
        sampler = None if self.rss_method == "VmHWM" else _Sampler(process)
        if sampler is None:
            CLEAR_REFS.write_text("5\n")  # resets VmHWM to the current RSS
        else:
            sampler.start()
        start = time.perf_counter()
        result = operation()
        seconds = time.perf_counter() - start
        if sampler is None:
            peak = _vm_hwm()
        else:
            peak = sampler.finish()
        del result
        gc.collect()
        return seconds, max(0, peak - baseline)


def _try_write(path: Path, text: str) -> bool:
    try:
        path.write_text(text)
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _vm_hwm() -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


class _Sampler(threading.Thread):
    def __init__(self, process: Any) -> None:
        super().__init__(daemon=True)
        self.process, self.peak, self.done = process, process.memory_info().rss, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.001):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def finish(self) -> int:
        self.done.set()
        self.join()
        return max(self.peak, self.process.memory_info().rss)


def _torch_save(state: dict, path: Path, fsync: bool) -> None:
    torch.save(state, path)
    if fsync:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def _sha256_all(groups: dict[str, dict[str, torch.Tensor]]) -> None:
    digest = hashlib.sha256()
    for tensors in groups.values():
        for tensor in tensors.values():
            if tensor.numel():
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)


def _read_all(where: Path) -> None:
    """Bring a file, or every file of a folder, into the page cache."""
    for path in [where] if where.is_file() else sorted(where.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                while handle.read(16 * MIB):
                    pass


# -- one case ----------------------------------------------------------------------------


def run_case(
    name: str, state: dict, plain: dict, repeats: int, folder: Path, probe: Probe, before: bool
) -> dict[str, Any]:
    groups, meta = state["groups"], state["meta"]
    case_dir = folder / name
    load_store = CheckpointStore(case_dir / "load")
    load_info = load_store.save(0, groups, meta)
    torch_file = case_dir / "load.pt"
    torch.save(plain, torch_file)
    _check_round_trip(load_store, groups)
    saves = [m for m in SAVE_METHODS if before or m != "before"]
    loads = [m for m in LOAD_METHODS if before or m != "before"]
    samples: dict[str, dict[str, list[float]]] = {}
    load_averages: list[float] = []

    def record(key: str, seconds: float, rss: int) -> None:
        entry = samples.setdefault(key, {"seconds": [], "peak_extra_rss_mib": []})
        entry["seconds"].append(round(seconds, 4))
        entry["peak_extra_rss_mib"].append(round(rss / MIB, 1))

    for repeat in range(repeats):
        for method in saves:
            target = case_dir / f"save_{method}"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            operation = _save_operation(method, target, repeat, state, plain)
            probe.drop_cache(folder)
            record(f"save_{method}", *probe.measure(operation))
            shutil.rmtree(target)
        # The floor for any SHA-256-verified save or load on one core: hashing alone.
        record("sha256_only", *probe.measure(lambda: _sha256_all(groups)))
        for temperature in ("cold", "warm"):
            for method in loads:
                operation = _load_operation(method, load_store, torch_file)
                probe.drop_cache(folder)
                if temperature == "warm":
                    _read_all(torch_file if method == "torch" else load_info.path)
                record(f"load_{temperature}_{method}", *probe.measure(operation))
        load_averages.append(round(os.getloadavg()[0], 2))  # other users of the CPUs
        print(f"  {name}: repeat {repeat + 1}/{repeats}, load {load_averages[-1]}", flush=True)
    tensor_bytes = sum(t.numel() * t.element_size() for g in groups.values() for t in g.values())
    return {
        "repeats": repeats,
        "tensor_bytes": tensor_bytes,
        "checkpoint_bytes": load_info.bytes,
        "torch_save_bytes": torch_file.stat().st_size,
        "groups": {g: len(t) for g, t in groups.items()},
        "load_average_1min_per_repeat": load_averages,
        "samples": samples,
        "medians": {
            key: {field: statistics.median(values) for field, values in entry.items()}
            for key, entry in samples.items()
        },
    }


def _save_operation(
    method: str, target: Path, epoch: int, state: dict, plain: dict
) -> Callable[[], Any]:
    if method in ("torch", "torch_fsync"):
        return lambda: _torch_save(plain, target / "state.pt", fsync=method == "torch_fsync")
    store = CheckpointStore(target)
    if method == "after":
        return lambda: store.save(epoch, state["groups"], state["meta"])

    def before_save() -> Any:
        with before_implementation():
            return store.save(epoch, state["groups"], state["meta"])

    return before_save


def _load_operation(method: str, store: CheckpointStore, torch_file: Path) -> Callable[[], Any]:
    if method == "torch":
        return lambda: torch.load(torch_file, weights_only=True)
    if method == "after":
        return lambda: store.load(0)

    def before_load() -> Any:
        with before_implementation():
            return store.load(0)

    return before_load


def _check_round_trip(store: CheckpointStore, groups: dict) -> None:
    loaded = store.load(0).groups
    for group, tensors in groups.items():
        for key, tensor in tensors.items():
            if not torch.equal(loaded[group][key], tensor):
                raise AssertionError(f"{group}/{key} did not round-trip")


# -- report ------------------------------------------------------------------------------


def ratios(medians: dict[str, dict[str, float]]) -> dict[str, float]:
    def ratio(top: str, bottom: str) -> float | None:
        if top not in medians or bottom not in medians:
            return None
        return round(medians[top]["seconds"] / medians[bottom]["seconds"], 3)

    pairs = {
        "save_after/torch": ("save_after", "save_torch"),
        "save_after/torch_fsync": ("save_after", "save_torch_fsync"),
        "save_before/torch": ("save_before", "save_torch"),
        "save_before/torch_fsync": ("save_before", "save_torch_fsync"),
        "save_after/before": ("save_after", "save_before"),
        "sha256_only/torch_save": ("sha256_only", "save_torch"),
        "sha256_only/torch_load_warm": ("sha256_only", "load_warm_torch"),
    }
    for temperature in ("cold", "warm"):
        prefix = f"load_{temperature}"
        pairs[f"{prefix}_after/torch"] = (f"{prefix}_after", f"{prefix}_torch")
        pairs[f"{prefix}_before/torch"] = (f"{prefix}_before", f"{prefix}_torch")
        pairs[f"{prefix}_after/before"] = (f"{prefix}_after", f"{prefix}_before")
    found = {name: ratio(*pair) for name, pair in pairs.items()}
    return {name: value for name, value in found.items() if value is not None}


def table(cases: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| case | operation | after s | before s | torch s | torch+fsync s "
        "| after/torch | before/torch | after/(torch+fsync) "
        "| peak extra RSS MiB after / before / torch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, case in cases.items():
        for op, label in (
            ("save", "save"),
            ("load_cold", "load, cold"),
            ("load_warm", "load, warm"),
        ):
            lines.append(_row(name, label, op, case["medians"], case["ratios"]))
    lines.append("")
    for name, case in cases.items():
        seconds = case["medians"]["sha256_only"]["seconds"]
        lines.append(
            f"{name}: SHA-256 of the state in memory alone takes {seconds:g} s "
            f"({case['ratios']['sha256_only/torch_save']:.2f}x torch.save, "
            f"{case['ratios']['sha256_only/torch_load_warm']:.2f}x a warm torch.load)"
        )
    return "\n".join(lines)


def _row(name: str, label: str, op: str, medians: dict, found: dict[str, float]) -> str:
    def cell(method: str, field: str = "seconds") -> str:
        entry = medians.get(f"{op}_{method}")
        return "–" if entry is None else f"{entry[field]:g}"

    def ratio_cell(key: str) -> str:
        return f"{found[key]:.2f}x" if key in found else "–"

    rss = " / ".join(cell(m, "peak_extra_rss_mib") for m in ("after", "before", "torch"))
    return (
        f"| {name} | {label} | {cell('after')} | {cell('before')} | {cell('torch')} "
        f"| {cell('torch_fsync')} | {ratio_cell(f'{op}_after/torch')} "
        f"| {ratio_cell(f'{op}_before/torch')} | {ratio_cell(f'{op}_after/torch_fsync')} "
        f"| {rss} |"
    )


def environment(probe: Probe, folder: Path, temporary: bool) -> dict[str, Any]:
    return benchenv.environment(
        {
            "torch_threads": torch.get_num_threads(),
            "safetensors": safetensors.__version__,
            "folder": benchenv.relative_path(folder, temporary),
            "page_cache_drop": probe.cache_method,
            "peak_rss": probe.rss_method,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dir",
        type=Path,
        help="disk folder to write into (default: a temp "
        "folder next to the repository, removed afterwards)",
    )
    parser.add_argument("--cases", default="minilm,big")
    parser.add_argument("--repeats-minilm", type=int, default=5)
    parser.add_argument("--repeats-big", type=int, default=3)
    parser.add_argument("--big-gib", type=float, default=1.0)
    parser.add_argument("--big-optimizer", action="store_true", help="add AdamW state to big")
    parser.add_argument("--no-before", action="store_true", help="skip the previous implementation")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    repo = Path(__file__).resolve().parents[1]
    folder = args.dir or Path(tempfile.mkdtemp(prefix="leanhpo-bench-checkpoint-", dir=repo.parent))
    folder.mkdir(parents=True, exist_ok=True)
    probe = Probe()
    env = environment(probe, folder, temporary=args.dir is None)
    print(json.dumps(env), flush=True)
    cases: dict[str, dict[str, Any]] = {}
    try:
        for name in args.cases.split(","):
            if name == "minilm":
                state, plain = minilm_state()
                repeats = args.repeats_minilm
            elif name == "big":
                state, plain = big_state(args.big_gib, args.big_optimizer)
                repeats = args.repeats_big
            else:
                raise SystemExit(f"unknown case {name!r}; use minilm and/or big")
            case = run_case(name, state, plain, repeats, folder, probe, not args.no_before)
            case["ratios"] = ratios(case["medians"])
            case["optimizer_state"] = "optimizer" in state["groups"]
            cases[name] = case
            del state, plain
            gc.collect()
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for name in cases:
                shutil.rmtree(folder / name, ignore_errors=True)
    env["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "cases": cases}, indent=2) + "\n")
    print(table(cases))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
