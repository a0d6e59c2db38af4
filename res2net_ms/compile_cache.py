"""Compiled graphs reused across runs: MindSpore's compile cache, made safe to leave on.

A resumed run, ``validate.py``, ``predict`` and ``export`` compile the very graphs an earlier
run compiled (about 16 s for a Res2Net-50 training step on 2 CPU cores). MindSpore can cache
them (``MS_COMPILER_CACHE_ENABLE``), but alone it is unsafe to leave on: it checks only the
entry script and the files that script imports, so a changed option, an upgraded package or
another input shape loads the old graph without a word (a graph of other shapes runs and
returns numbers); it numbers graphs by their compile order in the process; and a kill while it
writes leaves a broken file. Here:

* every graph is an entry of its own, named by the sha256 of everything that shapes it
  (:func:`graph_key`): MindSpore's version and commit, the source files of every package
  whose cells are in the graph (ours included), each cell's class, settings, operators and
  constant tensors, each parameter's name, shape and type, the inputs' shapes and types, the
  execution mode, device, jit level, determinism, parallel context, rank and the ``MS_DEV_*``
  switches. Weights are not in a graph: a cached graph runs with the cell's own parameters;
* MindSpore's cache is on only around that one compile, in a folder of this process, where the
  entry's files are put under the number MindSpore gives the graph (and the folder is emptied
  after every compile, so no file can meet another graph's number);
* an entry is written whole under a temporary name and renamed into place
  (:func:`res2net_ms.fileio.atomic_write`) with a manifest of its files' sizes and sha256; an
  entry that fails that check (or that MindSpore refuses) is never loaded: it is removed,
  compiled again and replaced, with a warning;
* whether MindSpore used an entry is read from its own files: it leaves a file it loads
  untouched, and writes one when it compiles.

The entries live in ``$R2N_CACHE_DIR/compile`` (default ``~/.cache/res2net_ms/compile``); the
most recently used are kept, up to :data:`MAX_ENTRIES` and :data:`MAX_BYTES`.
``R2N_COMPILE_CACHE=0`` turns the cache off. It is on by default on CPU, the device it is
tested on (``R2N_COMPILE_CACHE=1`` turns it on elsewhere), and stands aside when the user
drives MindSpore's own cache (``MS_COMPILER_CACHE_ENABLE`` or ``MS_COMPILER_CACHE_PATH`` set).
"""
import atexit
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import weakref

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore.common import api as ms_api
from mindspore.communication import GlobalComm, get_group_size, get_rank
from mindspore.ops import Primitive
from mindspore.train import mind_ir_pb2

from .fileio import TEMP_MARK, atomic_write, cache_folder, remove_stale_temporaries, sha256_file

__all__ = ["ENV_SWITCH", "MAX_BYTES", "MAX_ENTRIES", "cache_root", "compile_cell", "enabled",
           "graph_key", "lr_table_for_graph", "stats"]

ENV_SWITCH = "R2N_COMPILE_CACHE"
MAX_ENTRIES = 256  # a few MB each (2.8 MB a detector's training step): MAX_BYTES bounds the folder
MAX_BYTES = 4 << 30  # an entry can be as large as the weights: MindSpore folds some
                     # optimizer constants (AdamW's) into the graph
MANIFEST = "manifest.json"
FORMAT = 1
# What this process's compiles did: "loaded", "compiled" (and cached), "rebuilt" (a damaged
# or refused entry replaced), "uncached" (cache off, or not possible for this cell).
stats = collections.Counter()

_logger = logging.getLogger("res2net_ms")
_GRAPH_FILE = re.compile(r"compile_cache_(\d+)")
# MindSpore's notices about the cache it is told to use: said by the log lines of this module.
_NOTICES = ("MS_DEV_FORCE_USE_COMPILE_CACHE has been set",
            "Use the compilation cache and execute the backend actions only",
            "Open the compilation cache file", "Failed to load the compilation cache file")
# The execution context's settings that change what a compile makes of a cell.
_CONTEXT = ("mode", "jit_config", "jit_syntax_level", "deterministic", "enable_graph_kernel",
            "graph_kernel_flags", "memory_optimize_level", "exec_order", "max_call_depth")
# Cell attributes that MindSpore sets per instance or per compile, or that only record a
# constructor's argument (an optimizer's ``init_learning_rate``: its graph reads the
# ``learning_rate`` parameter): not part of a graph.
_VOLATILE = {"arguments_key", "compile_phase", "current_phase", "phase", "phase_cache",
             "create_time", "cell_init_args", "instance_count", "is_top_cell",
             "parameter_layout_dict", "parallel_parameter_layout_dict", "sequence_modified",
             "init_learning_rate"}


class _Damaged(Exception):
    """A cache entry that must not be loaded; the message says why."""


# Learning-rate tables of up to this many steps share one length (longer ones: the next power
# of two), so that a run of other epochs or images reuses a graph (see lr_table_for_graph).
LR_TABLE_MIN_LENGTH = 4096


def lr_table_for_graph(rates):
    """``rates`` (one learning rate per optimizer step) padded with its last value to
    :data:`LR_TABLE_MIN_LENGTH` or the next power of two. The optimizer keeps its table as a
    parameter, whose shape is part of the graph: unpadded, every epoch count or data size
    would compile a graph of its own (a resume with more epochs, a shorter test run). The
    steps past the run's end are never taken."""
    rates = np.asarray(rates, dtype=np.float32).reshape(-1)
    length = max(LR_TABLE_MIN_LENGTH, 1 << max(len(rates) - 1, 0).bit_length())
    return np.concatenate([rates, np.full(length - len(rates), rates[-1], np.float32)])


# --------------------------------------------------------------------------- the key
def _describe(value, depth=0):
    """A deterministic text for an attribute value: what of it can shape a graph."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, Parameter):
        return f"P({value.name},{tuple(value.shape)},{value.dtype},{value.requires_grad})"
    if isinstance(value, Tensor):  # a constant of the graph: its bytes count
        data = value.asnumpy()
        return f"T({data.shape},{value.dtype},{hashlib.sha256(data.tobytes()).hexdigest()})"
    if isinstance(value, np.ndarray):
        return f"A({value.shape},{value.dtype},{hashlib.sha256(value.tobytes()).hexdigest()})"
    if isinstance(value, nn.Cell):
        return f"cell:{type(value).__qualname__}"  # its own entry comes from the walk
    if isinstance(value, Primitive):
        attrs = ",".join(f"{k}={_describe(v, depth + 1)}" for k, v in sorted(value.attrs.items())
                         if k != "instance_name")
        return f"{type(value).__name__}({attrs})"
    if isinstance(value, ms.dtype.Type):
        return str(value)
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    if depth > 4:
        return type(value).__qualname__
    if isinstance(value, dict):
        return "{" + ",".join(f"{_describe(k, depth + 1)}:{_describe(v, depth + 1)}"
                              for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_describe(v, depth + 1) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        return repr(value)
    return type(value).__qualname__


def _cell_lines(cell):
    """One line per cell of the tree (class, settings, operators, constants, flags) and per
    parameter (name, shape, type, trainable)."""
    lines = []
    for name, sub in cell.cells_and_names():
        attrs = ",".join(f"{k}={_describe(v)}" for k, v in sorted(vars(sub).items())
                         if not k.startswith("_") and k not in _VOLATILE)
        cls = type(sub)
        lines.append(f"{name}|{cls.__module__}.{cls.__qualname__}|{attrs}|"
                     f"{_describe(sub.get_flags())}")
    lines += [f"{name}|{_describe(p)}" for name, p in cell.parameters_and_names()]
    return lines


def _source_hash(module_name):
    """sha256 of the source files of the package (or lone module) ``module_name`` is in, read
    once per process."""
    top = module_name.split(".")[0]
    if top not in _source_hashes:
        module = sys.modules.get(top)
        paths = []  # (path, name within the package)
        if module is not None and getattr(module, "__path__", None):
            for folder in module.__path__:
                for root, dirs, files in os.walk(folder):
                    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                    paths += [(os.path.join(root, f), os.path.relpath(os.path.join(root, f),
                                                                      folder))
                              for f in sorted(files) if f.endswith((".py", ".cc", ".cpp", ".h"))]
        elif module is not None and getattr(module, "__file__", None):
            paths = [(module.__file__, os.path.basename(module.__file__))]
        digest = hashlib.sha256()
        for path, name in paths:
            with open(path, "rb") as f:
                digest.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
        _source_hashes[top] = digest.hexdigest()
    return _source_hashes[top]


# Our package is hashed now, as its modules are read, not at the first compile: a file edited
# in between would otherwise name an old graph by new sources.
_source_hashes = {}
_source_hash(__name__)


def _describe_input(value):
    if isinstance(value, Tensor):
        return f"T({tuple(value.shape)},{value.dtype})"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_describe_input(v) for v in value) + "]"
    return _describe(value)


def _process_settings():
    """MindSpore, the execution context and the switches that change what it compiles."""
    rank, group = (get_rank(), get_group_size()) if GlobalComm.INITED else (0, 1)
    commit = ""
    with contextlib.suppress(OSError), open(os.path.join(os.path.dirname(ms.__file__),
                                                         ".commit_id"), encoding="utf-8") as f:
        commit = f.read().strip()
    return {
        "mindspore": ms.__version__, "mindspore_commit": commit,
        "python": list(sys.version_info[:2]),
        "device": ms.get_context("device_target"),
        "context": {k: ms.get_context(k) for k in _CONTEXT},
        "parallel": [ms.get_auto_parallel_context(k) for k in
                     ("parallel_mode", "device_num", "gradients_mean", "full_batch")],
        "rank": rank, "group_size": group,
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("MS_DEV_", "MS_JIT", "MS_ENABLE_", "RES2NET_MS_"))
                and k != "MS_DEV_FORCE_USE_COMPILE_CACHE"},
    }


def graph_key(cell, inputs, what="graph", phase=None):
    """``(key, summary)``: the sha256 naming the graph ``cell`` compiles for ``inputs`` in
    ``phase`` (MindSpore's compile phase: the cell's own by default, ``export.mindir`` for an
    export...), and the readable part of what it covers, with the label ``what`` (stored in
    the entry's manifest; the label is not part of the key)."""
    lines = _cell_lines(cell)
    packages = sorted({type(sub).__module__.split(".")[0] for _, sub in cell.cells_and_names()}
                      - {"mindspore"} | {__name__.split(".")[0]})
    summary = {"cell": f"{type(cell).__module__}.{type(cell).__qualname__}",
               "phase": phase or cell.phase,
               "inputs": [_describe_input(x) for x in inputs],
               "training": cell.training, **_process_settings(),
               "sources": {p: _source_hash(p) for p in packages},
               "cells": len(lines), "structure": hashlib.sha256(
                   "\n".join(lines).encode()).hexdigest()}
    key = hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()
    return key, {"what": what, **summary}


# --------------------------------------------------------------------------- where, whether
def cache_root():
    """The folder of the entries: ``$R2N_CACHE_DIR/compile`` (``~/.cache/res2net_ms/compile``)."""
    return os.path.join(cache_folder(), "compile")


_off_noted = set()


def _off_reason():
    """Why the cache is off for this compile, or None."""
    switch = os.environ.get(ENV_SWITCH, "").strip().lower()
    if switch in ("0", "false", "off", "no"):
        return f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    if _work.broken:
        return _work.broken
    if "MS_COMPILER_CACHE_ENABLE" in os.environ or "MS_COMPILER_CACHE_PATH" in os.environ:
        return "MindSpore's own compile cache is set up (MS_COMPILER_CACHE_*)"
    if ms.get_context("device_target") != "CPU" and switch not in ("1", "true", "on", "yes"):
        return f"{ENV_SWITCH}=1 turns it on for {ms.get_context('device_target')} (tested on CPU)"
    return None


def enabled():
    """Whether the next compile goes through the cache."""
    return _off_reason() is None


# --------------------------------------------------------------------------- MindSpore's side
class _Work:
    """MindSpore's cache folder for this process (it reads the path once) and the number it
    gives the next graph it compiles with its cache on."""

    def __init__(self):
        self.path = None
        self.next_index = 0    # None after a failed compile, until the next one tells
        self.broken = None     # why the cache is off for the rest of the process
        self.swept = set()     # the roots cleared of killed writers' leftovers

    def graphs(self):
        rank = get_rank() if GlobalComm.INITED else 0
        return os.path.join(self.path, f"rank_{rank}", "graph_cache")

    def open(self, root):
        """Make the folder (in the first root used) and clear ``root`` of the leftovers of
        killed processes (their entries half-written, their folders)."""
        if root not in self.swept:
            remove_stale_temporaries(root)
            self.swept.add(root)
        if self.path is None:
            self.path = os.path.join(root, f".work{TEMP_MARK}{os.getpid()}")
            os.makedirs(self.path, exist_ok=True)
            atexit.register(shutil.rmtree, self.path, ignore_errors=True)
        os.makedirs(self.graphs(), exist_ok=True)

    def files(self):
        """``{path: (inode, mtime, size)}`` of the graph files in the folder (any rank)."""
        found = {}
        for root, _, names in os.walk(self.path):
            for name in names:
                if _GRAPH_FILE.search(name):
                    path = os.path.join(root, name)
                    st = os.stat(path)
                    found[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return found

    def clear(self):
        for root, _, names in os.walk(self.path):
            for name in names:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(root, name))


_work = _Work()


@contextlib.contextmanager
def _mindspore_cache_on(path):
    """MindSpore's compile cache on, in ``path``, for the ``with`` block only, without its
    own check of the entry script and its imports (the key covers far more; and it fails
    when ``sys.argv[0]`` is no file, as under ``python -m``), and without its notices on
    stderr (this module logs what happened)."""
    names = ("MS_COMPILER_CACHE_PATH", "MS_COMPILER_CACHE_ENABLE",
             "MS_DEV_FORCE_USE_COMPILE_CACHE")
    os.environ.update(dict(zip(names, (path, "1", "1"))))
    dependencies, ms_api._get_compile_cache_dep_files = ms_api._get_compile_cache_dep_files, list
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            ms_api._get_compile_cache_dep_files = dependencies
            for name in names:
                os.environ.pop(name, None)
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines = log.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines
                                     if not any(n in line for n in _NOTICES)))
            sys.stderr.flush()


# --------------------------------------------------------------------------- entries
def _checked_entry(entry, key):
    """The manifest of the entry ``entry`` after checking every file it lists; None when
    there is no entry; raises :class:`_Damaged`."""
    if not os.path.isdir(entry):
        return None
    try:
        with open(os.path.join(entry, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise _Damaged(f"unreadable manifest: {type(exc).__name__}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or manifest.get("key") != key or not manifest.get("files"):
        raise _Damaged("its manifest is not this graph's")
    for name, info in manifest["files"].items():
        path = os.path.join(entry, name)
        if not os.path.isfile(path):
            raise _Damaged(f"{name} is missing")
        if os.path.getsize(path) != info.get("bytes") or sha256_file(path) != info.get("sha256"):
            raise _Damaged(f"{name} does not match its sha256")
    return manifest


def _remove_entry(entry):
    """Take ``entry`` out of use at once (a rename), then delete it."""
    aside = f"{entry}{TEMP_MARK}{os.getpid()}"
    with contextlib.suppress(OSError):
        os.rename(entry, aside)
        shutil.rmtree(aside, ignore_errors=True)


def _place(manifest, entry, index):
    """Copy the entry's files into MindSpore's folder under graph number ``index``; their
    times are set to 0 so that a file MindSpore rewrites shows."""
    placed = []
    for name in manifest["files"]:
        target = os.path.join(_work.graphs(), name.replace("@", str(index)))
        shutil.copyfile(os.path.join(entry, name), target)
        os.utime(target, ns=(0, 0))
        placed.append(target)
    return placed


def _unreadable(paths):
    """The first graph file of ``paths`` that is not a whole MindIR, or None."""
    for path in paths:
        if path.endswith(".mindir"):
            try:
                with open(path, "rb") as f:
                    mind_ir_pb2.ModelProto().ParseFromString(f.read())
            except Exception:  # noqa: BLE001 - protobuf's DecodeError, RuntimeError...
                return os.path.basename(path)
    return None


def _publish(entry, key, summary, written, index, seconds):
    """Write the graph files MindSpore just wrote as the entry ``entry``, atomically."""
    def write(tmp):
        os.makedirs(tmp)
        files = {}
        for path in written:
            name = os.path.basename(path).replace(f"compile_cache_{index}",
                                                  "compile_cache_@")
            shutil.copyfile(path, os.path.join(tmp, name))
            files[name] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
        manifest = {"format": FORMAT, "key": key, "files": files,
                    "compile_seconds": round(seconds, 3), "summary": summary}
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, default=str)

    atomic_write(entry, write)
    _prune(os.path.dirname(entry))


def _prune(root):
    """Keep the most recently used entries: at most :data:`MAX_ENTRIES`, :data:`MAX_BYTES`."""
    entries = []
    for item in os.scandir(root):
        if item.is_dir() and not item.name.startswith("."):
            with contextlib.suppress(OSError):
                used = os.stat(os.path.join(item.path, MANIFEST)).st_mtime
                size = sum(f.stat().st_size for f in os.scandir(item.path))
                entries.append((used, size, item.path))
    total = 0
    for count, (_, size, path) in enumerate(sorted(entries, reverse=True)):
        total += size
        if count >= MAX_ENTRIES or (count and total > MAX_BYTES):
            _remove_entry(path)


# --------------------------------------------------------------------------- compiling
_compiled = weakref.WeakKeyDictionary()


def compile_cell(cell, *inputs, what="graph", phase=None, call=None):
    """Compile ``cell`` for ``inputs`` as ``cell.compile`` does, loading the graph from the
    cache when the same graph was compiled before (in this or an earlier process).

    ``what`` names the graph in the log lines. ``call`` replaces ``cell.compile``: a call that
    compiles ``cell`` once in ``phase`` (``mindspore.export`` does, in ``export.mindir``); it
    is made exactly once, whatever the cache does. Returns ``"loaded"`` (from the cache),
    ``"compiled"`` (and cached), ``"rebuilt"`` (a damaged entry compiled again and replaced),
    ``"reused"`` (this process has the graph already) or ``"uncached"`` (cache off; nothing
    is compiled here in PyNative mode or for a loaded MINDIR, whose first call compiles it).
    """
    run = call or (lambda: cell.compile(*inputs))
    if ms.get_context("mode") != ms.GRAPH_MODE or isinstance(cell, nn.GraphCell):
        if call:
            call()
        return "uncached"  # nothing to compile (PyNative), or a graph already (a MINDIR)
    why_not = _off_reason()
    if why_not:
        run()
        if why_not not in _off_noted:
            _off_noted.add(why_not)
            _logger.info("compile cache off: %s", why_not)
        stats["uncached"] += 1
        return "uncached"
    key, summary = graph_key(cell, inputs, what, phase)
    done = _compiled.setdefault(cell, set())
    if key in done:
        run()
        return "reused"
    entry = os.path.join(cache_root(), key)
    try:
        _work.open(os.path.dirname(entry))
    except OSError as exc:
        return _give_up(run, f"cannot use {cache_root()}: {exc}")
    outcome = _compile_through(cell, run, what, key, summary, entry)
    done.add(key)
    stats[outcome] += 1
    return outcome


def _give_up(run, reason):
    """Turn the cache off for the rest of the process, saying why; compile without it."""
    _work.broken = reason
    _logger.warning("warning: compile cache off for this run: %s", reason)
    run()
    stats["uncached"] += 1
    return "uncached"


def _compile_through(cell, run, what, key, summary, entry):
    """Compile with MindSpore's cache on, the entry's files in place if it has a sound one
    (and the graph's number is known); publish what MindSpore wrote when it compiled."""
    damaged = False
    try:
        manifest = _checked_entry(entry, key)
    except _Damaged as exc:
        damaged, manifest = True, None
        _logger.warning("warning: compile cache entry %s is damaged (%s): compiling the %s "
                        "again", entry, exc, what)
        _remove_entry(entry)
    index = _work.next_index
    _work.clear()
    try:
        try:
            placed = _place(manifest, entry, index) if manifest and index is not None else []
        except OSError as exc:  # a full disk or a file-size limit: compile without the cache
            return _give_up(run, f"cannot copy {entry} into place: {exc}")
        before, phases = _work.files(), set(cell.compile_cache)
        start = time.perf_counter()
        try:
            with _mindspore_cache_on(_work.path):
                run()
        except BaseException:
            _work.next_index = None  # whether MindSpore counted this graph is not known
            raise
        seconds = time.perf_counter() - start
        if set(cell.compile_cache) <= phases:  # MindSpore had this graph: nothing compiled
            return "reused"
        written = sorted(p for p, sig in _work.files().items() if before.get(p) != sig)
        if placed and not written:  # MindSpore loaded the entry and left its file alone
            _work.next_index = index + 1
            with contextlib.suppress(OSError):
                os.utime(os.path.join(entry, MANIFEST))  # recently used: kept by _prune
            _logger.info("compile cache: %s loaded in %.1f s", what, seconds)
            return "loaded"
        return _keep(written, what, key, summary, entry, seconds,
                     refused=bool(placed), in_step=manifest is None, damaged=damaged)
    finally:
        _work.clear()  # no file may meet a later graph's number


def _keep(written, what, key, summary, entry, seconds, refused, in_step, damaged):
    """MindSpore compiled the graph and wrote it: learn its number, and publish it unless the
    entry is sound (the numbering was off, or not known)."""
    numbers = {int(_GRAPH_FILE.search(os.path.basename(p)).group(1)) for p in written}
    if len(numbers) != 1:
        _work.broken = (f"MindSpore wrote {len(numbers)} numbered graphs for one compile"
                        if numbers else "MindSpore did not write the graph where it was told "
                        "(its cache folder was set before this process's first compile)")
        _logger.warning("warning: compile cache off for this run: %s", _work.broken)
        return "uncached"
    number = numbers.pop()
    expected, _work.next_index = _work.next_index, number + 1
    if refused and number == expected:  # MindSpore rewrote the file it was given
        damaged = True
        _logger.warning("warning: compile cache entry %s was refused by MindSpore: the %s was "
                        "compiled again", entry, what)
        _remove_entry(entry)
    elif not in_step:  # a sound entry, not placed or placed under the wrong number
        return "compiled"
    unreadable = _unreadable(written)
    if unreadable:  # e.g. a file-size limit cut MindSpore's write short
        _logger.warning("warning: compile cache: MindSpore's file of the %s does not parse "
                        "(%s): not cached", what, unreadable)
        return "uncached"
    try:
        _publish(entry, key, summary, written, number, seconds)
    except OSError as exc:
        _work.broken = f"cannot write {entry}: {exc}"
        _logger.warning("warning: compile cache off for this run: %s", _work.broken)
        return "uncached"
    _logger.info("compile cache: %s compiled in %.1f s and cached", what, seconds)
    return "rebuilt" if damaged else "compiled"
