"""Batch generation: many (prompt, seed) items into one folder, with a manifest, split between processes.

``launch.py generate --prompts-file FILE --seeds 0-99 --output DIR`` makes one image per (prompt, seed):

* **Items.** ``FILE`` holds one prompt a line (``#`` starts a comment), or JSON lines
  (``{"prompt": ..., "seed": ..., "domain_weight": ..., "control_weight": ..., "guidance_rule": ...,
  "negative_prompt": ...}``, every key but ``prompt`` optional; a line with its own ``seed`` is one item, others take
  every seed of ``--seeds``). Item ``i`` is written to ``DIR/<i:05d>-s<seed>.png``.
* **Per-item seeds.** Each image starts from the noise of its own seed (row 0 of
  ``pipe.prepare_latents(1, seed=seed)``), so an image does not depend on which process made it or with what.
* **Fixed global batches.** Items are grouped, in file order, into batches of ``--batch-size`` items that share
  their guidance settings; with ``P`` processes, process ``r`` takes batches ``r, r + P, ...`` of those with items
  still to make (:func:`share`). A batch is the same batch in every run, so the files of a 2-process run are
  byte-identical to a 1-process run's (tested on the CPU). A resumed batch makes only its missing items, in what is
  left of their batches (the same images up to float rounding), shared out again between the processes.
* **The manifest.** ``DIR/manifest.jsonl``, one JSON line per image: file, prompt, seed, guidance settings, the
  weights and the rule applied, and the models' hashes. Each process appends to its own part
  (``manifest.rank<r>.jsonl``) after the image is renamed into place; at the end the parts are merged in item order
  (process 0, after the others finish). A resumed batch skips every item whose image and manifest line exist and
  makes the others again, so an item is never half done.
* **Processes.** Under ``accelerate launch --num_processes N launch.py generate ...`` or ``torchrun
  --nproc_per_node N launch.py generate ...``, the rank and world size come from accelerate's ``PartialState``
  (which reads both launchers' environment); each process uses its own device (``cuda:<local rank>``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .checks import MAX_SEED, LaunchError, UserError, changed_settings, check_prompt, check_weight
from .rules import RECOMMENDED, format_rule, parse_rule

__all__ = ["Item", "parse_seeds", "read_items", "batches", "share", "run_batch", "process_state", "item_path",
           "MANIFEST"]

MANIFEST = "manifest.jsonl"
MAX_ITEMS = 1_000_000  # a typo such as --seeds 0-99999999999 is refused, not built in memory
MAX_PROMPTS_FILE = 256e6  # bytes of a prompts file (a million prompts of 250 characters), which is read whole
KEYS = ("prompt", "seed", "domain_weight", "control_weight", "guidance_rule", "negative_prompt")


@dataclass(frozen=True)
class Item:
    index: int
    prompt: str
    seed: int
    domain_weight: float | str | None = None
    control_weight: float | str | None = None
    guidance_rule: str | None = None
    negative_prompt: str = ""

    def settings(self) -> tuple:
        """What must be shared by the items of one batch (one guidance for the whole batch)."""
        return bool(self.prompt), self.domain_weight, self.control_weight, self.guidance_rule, self.negative_prompt

    def with_defaults(self, domain_weight=None, control_weight=None, guidance_rule: str | None = None,
                      negative_prompt: str = "") -> Item:
        """This item with the command's flags where its line set nothing."""
        return replace(self, domain_weight=self.domain_weight if self.domain_weight is not None else domain_weight,
                       control_weight=self.control_weight if self.control_weight is not None else control_weight,
                       guidance_rule=self.guidance_rule if self.guidance_rule is not None else guidance_rule,
                       negative_prompt=self.negative_prompt or negative_prompt)


def parse_seeds(text: str) -> list[int]:
    """``"0-99"``, ``"3"`` or ``"1,5,9-12"`` -> the seeds, in order; one sentence on a mistake."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UserError(f"--seeds takes numbers and ranges such as 0-99 or 1,5,9-12, got {text!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise UserError(f"the seed range {part} is empty: write it low-high, e.g. 0-99")
        if hi > MAX_SEED:
            raise UserError(f"a seed is a whole number from 0 to {MAX_SEED}, got {hi}")
        if len(seeds) + hi - lo + 1 > MAX_ITEMS:
            raise UserError(f"--seeds {text} names more than {MAX_ITEMS:,} seeds: split the batch")
        seeds += range(lo, hi + 1)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text} names a seed twice: give each once")
    return seeds


def read_items(path: str | Path, seeds: list[int], negative_prompt: str = "") -> list[Item]:
    """The items of a prompts file (see the module's docstring); one sentence naming the line on a mistake.
    ``negative_prompt``: a line's that does not say one (``--negative-prompt``); a line's own ``""`` is kept."""
    p = Path(path).expanduser()  # --prompts-file ~/prompts.txt
    if p.is_dir():
        raise UserError(f"the prompts file {str(p)!r} is a folder: give a text file with one prompt a line (the file "
                        f"inside it)")
    if not p.is_file():
        raise UserError(f"the prompts file {str(p)!r} does not exist: give a text file with one prompt a line")
    size = p.stat().st_size
    if size > MAX_PROMPTS_FILE:  # read whole: a 3 GB file was a bare MemoryError
        raise UserError(f"the prompts file {str(p)!r} is {size / 1e6:,.0f} MB, over the {MAX_PROMPTS_FILE / 1e6:,.0f} MB a "
                        f"batch reads: split it into several batches")
    try:
        # utf-8-sig: a file saved by Notepad starts with a BOM; lines end at \n only (str.splitlines also breaks at
        # U+2028, U+0085 and form feeds, which a JSON line's prompt may hold)
        lines = [line.rstrip("\r") for line in p.read_text(encoding="utf-8-sig").split("\n")]
    except UnicodeDecodeError:
        raise UserError(f"the prompts file {str(p)!r} is not UTF-8 text: save it as UTF-8") from None
    items: list[Item] = []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"line {n} of {p.name}"
        if text.startswith("{"):
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"{where} is not valid JSON ({e.msg}): write one JSON object a line") from None
            unknown = sorted(set(row) - set(KEYS))
            if unknown or "prompt" not in row:
                raise UserError(f"{where} {'has no prompt' if 'prompt' not in row else f'has unknown keys {unknown}'}: "
                                f"use {', '.join(KEYS)}")
        else:
            row = {"prompt": text}
        prompt = check_prompt(row["prompt"], f"the prompt on {where}")
        for key in ("domain_weight", "control_weight"):
            if row.get(key) is not None:  # a number as a number ("0" is 0: the term is off); "recommended" and
                value = check_weight(row[key], f"{key} on {where}")  # "auto" stay as written (not the flags')
                if isinstance(value, float):
                    row[key] = value
        rule = row.get("guidance_rule")
        if isinstance(rule, str) and rule.strip().lower() == RECOMMENDED:
            rule = RECOMMENDED  # the domain's own, as the line says: not replaced by --guidance-rule (as weights)
        elif rule is not None:
            try:
                rule = format_rule(parse_rule(rule)) or None
            except UserError as e:
                raise UserError(f"{e} (on {where})") from None
        own = row.get("seed")
        if own is not None and (not isinstance(own, int) or isinstance(own, bool) or not 0 <= own <= MAX_SEED):
            raise UserError(f"the seed on {where} must be a whole number from 0 to {MAX_SEED}, got {own!r}")
        if len(items) + (1 if own is not None else len(seeds)) > MAX_ITEMS:
            raise UserError(f"the prompts file {p.name} with these seeds makes more than {MAX_ITEMS:,} items (at "
                            f"{where}): split it into several batches")
        for seed in [own] if own is not None else seeds:
            negative = row.get("negative_prompt")  # absent: the flag's; "" (a line's own empty one): none at all
            items.append(Item(len(items), prompt, seed, row.get("domain_weight"), row.get("control_weight"), rule,
                              negative_prompt if negative is None
                              else check_prompt(negative, f"the negative prompt on {where}")))
    if not items:
        raise UserError(f"the prompts file {str(p)!r} holds no prompt: write one prompt a line")
    return items


def batches(items: list[Item], size: int) -> list[list[Item]]:
    """Consecutive items with the same guidance settings, at most ``size`` a batch (fixed for a given file)."""
    out: list[list[Item]] = []
    for item in items:
        if out and len(out[-1]) < size and out[-1][0].settings() == item.settings():
            out[-1].append(item)
        else:
            out.append([item])
    return out


def claim_batch_folder(stack, state, folder: Path, kind: str, resume: bool, what: str = "a batch") -> None:
    """The batch's ``--output`` folder: locked (for the length of ``stack``) and claimed by process 0, checked
    read-only by the others, so that each process refuses by itself and none waits for one that has stopped.
    A folder already holding ``kind`` needs ``resume``."""
    from .files import claim_run_folder, output_lock

    check_processes_joined(state.num_processes)  # every batch, 3D ones too
    if state.is_main_process:
        stack.enter_context(output_lock(folder))
    if claim_run_folder(folder, kind, write=state.is_main_process) and not resume:
        raise UserError(f"the folder {str(folder)!r} holds {what} already: pass --resume to complete it, or choose "
                        f"another --output")


# How long a process waits at a barrier for the others: one whose share is done waits there for the rest, e.g. a
# whole 3D run of the last prompt, or what was left of a resumed batch; torch's default wait (10 minutes with NCCL,
# 30 with gloo) ended such runs with a timeout in every process.
PROCESS_WAIT_HOURS = 24


def process_wait():
    """:data:`PROCESS_WAIT_HOURS` as the ``timeout`` torch.distributed takes (accelerate passes it on)."""
    from datetime import timedelta

    return timedelta(hours=PROCESS_WAIT_HOURS)


def process_state(cpu: bool, fix: str = "--device cpu"):
    """accelerate's ``PartialState`` for a run split between processes (one process: a plain state), its barriers
    waiting up to :data:`PROCESS_WAIT_HOURS`; one sentence when fewer processes joined than were launched
    (:func:`check_processes_joined`)."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu, timeout=process_wait())
    check_processes_joined(state.num_processes, fix)
    return state


def in_daemon(fn, timeout: float, what: str) -> None:
    """``fn()`` in a daemon thread, left behind with a warning after ``timeout`` seconds (torch.distributed's shutdown
    now and then never returns: pytorch/pytorch#75097); its exception, if it raised one in time, is raised here."""
    import threading

    failure = []

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            failure.append(exc)

    worker = threading.Thread(target=run, name=what, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        logging.getLogger(__name__).warning("%s did not return within %.0f s (a known PyTorch hang); the results are "
                                            "written, so this process exits without it", what, timeout)
    elif failure:
        raise failure[0]


def end_processes(state, timeout: float = 60.0) -> None:
    """The end of a command split between processes: torch.distributed's process group destroyed, as training ends
    (a process that exited with it alive aborted now and then after its work was written: "terminate called without
    an active exception", exit -6, seen once in CI)."""
    if state.num_processes > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # (accelerate's own method needs accelerate 0.34)
            in_daemon(dist.destroy_process_group, timeout, "torch.distributed's shutdown")


def from_main(state, value):
    """``value`` as process 0 of ``state`` has it, in every process: a folder read once, by process 0, so that
    every process splits the same work (each reading it on its own, e.g. over a network file system, might not
    see the same files)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value if state.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def share(items: list[Item], done, batch_size: int, rank: int, world: int) -> list[list[Item]]:
    """Process ``rank``'s batches (of ``world``): the fixed global batches (:func:`batches`) less the ``done``
    items, those left empty dropped, then every ``world``-th from ``rank``. A fresh batch is split as its fixed
    batches; a resumed one shares out what is left, so that no process waits idle for another's whole share (a
    process that had finished its part before the stop had nothing to do)."""
    left = [[it for it in b if it.index not in done] for b in batches(items, batch_size)]
    return [b for b in left if b][rank::world]


def launched_processes() -> int:
    """How many processes the launcher (torchrun, accelerate launch) started for this run: its ``WORLD_SIZE``, 1
    without a launcher."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def check_processes_joined(num_processes: int, fix: str = "--device cpu") -> None:
    """One sentence when the launcher started more processes (``WORLD_SIZE``) than joined the run: ``accelerate
    launch --multi_gpu`` on a machine without GPUs starts each process as a run of its own unless told to use the
    CPU, and they would refuse each other's folder. ``fix``: the flag that joins them."""
    launched = launched_processes()
    if launched > num_processes:
        raise LaunchError(f"{launched} processes were launched but only {num_processes} joined the run (no GPU "
                          f"for each?): on a machine without GPUs pass {fix} to run them together on the CPU")


#: the flags that say a generate batch's items (a resume's sentence names them)
SAME_ITEMS = "the same prompts file, --seeds and guidance flags"


def run_batch(state, folder: Path, items: list[Item], batch_size: int, load, resume: bool,
              kind: str = "generate-batch", what: str = "a batch", settings: dict | None = None,
              equivalent: dict | None = None, same: str = SAME_ITEMS) -> int:
    """Make every item of ``items`` into ``folder`` (see the module): claim the folder, skip the done items, split
    the fixed batches between the processes of ``state`` (accelerate's ``PartialState``), sample, write each image
    and its manifest line, and merge the manifest. ``load()`` is called only by a process with items to make and
    returns ``(sample, models)``: ``sample(group) -> (images, weights, rule)`` for one batch, ``models`` the hashes
    recorded in the manifest. ``settings`` (``{flag: value}``: what every image is made with besides its item,
    e.g. the steps, the size and the models' hashes) go into each manifest line, and a resume with other settings
    is refused, naming the flags (``equivalent``: ``{flag: values}`` that make the same images, e.g. no
    ``--width`` and the model's native width; ``same``: the flags that say the items, for the sentence of a resume
    with others). Returns the number of items still missing (0 when the batch is complete)."""
    import logging
    import os
    from contextlib import ExitStack

    from .files import remove_leftovers, write_text_atomic
    from .images import save_image_atomic

    log = logging.getLogger("suite")
    rank, world = state.process_index, state.num_processes
    name = f"{folder.parent.name}/{folder.name}"
    with ExitStack() as stack:
        # 1. The folder: locked and claimed by process 0, checked read-only by the others.
        claim_batch_folder(stack, state, folder, kind, resume, what)
        done = from_main(state, done_items(folder) if state.is_main_process else None)  # one reading for all
        check_same_batch(done, items, settings, equivalent, same)
        if state.is_main_process:
            remove_leftovers(folders=[folder])
        state.wait_for_everyone()
        todo = share(items, done, batch_size, rank, world)
        log.info("batch %s: %d item(s), %d done; process %d of %d makes %d", name, len(items), len(done),
                 rank + 1, world, sum(map(len, todo)))

        # 2. The models, then this process's batches; a manifest line is written after its image is in place.
        sample, models = load() if todo else (None, None)
        part = folder / f"manifest.rank{rank}.jsonl"
        for k, group in enumerate(todo):
            images, weights, rule = sample(group)
            for j, (it, image) in enumerate(zip(group, images)):
                path = save_image_atomic(image, item_path(folder, it))
                with open(part, "a+", encoding="utf-8") as fh:
                    fh.seek(0, os.SEEK_END)
                    if fh.tell():  # a line cut by a kill stays alone on its line
                        fh.seek(fh.tell() - 1)
                        if fh.read(1) != "\n":
                            fh.write("\n")
                    own = {k: v[j] if isinstance(v, list) and len(v) == len(group) else v
                           for k, v in (weights or {}).items()}  # this image's weight, not its batch's
                    fh.write(manifest_line(it, path, own, rule, models, settings) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            log.info("batch %s: %d/%d groups (%d images) on process %d", name, k + 1, len(todo), len(group),
                     rank + 1)

        # 3. One manifest in item order (process 0, when every process is done).
        state.wait_for_everyone()
        missing = 0
        if state.is_main_process:
            lines = done_items(folder)
            write_text_atomic(folder / MANIFEST, "".join(lines[i] + "\n" for i in sorted(lines)))
            for p in folder.glob("manifest.rank*.jsonl"):
                p.unlink()
            missing = len(items) - len(lines)
            log.info("batch: %d of %d image(s) in %s%s", len(lines), len(items), folder,
                     f"; {missing} missing: run again with --resume" if missing else "")
        if world > 1:  # every process returns the same count (and so stops, or goes on, together)
            from accelerate.utils import broadcast_object_list

            missing = broadcast_object_list([missing])[0]
        else:
            state.wait_for_everyone()
    return missing


def item_path(folder: Path, item: Item, suffix: str = ".png") -> Path:
    return folder / f"{item.index:05d}-s{item.seed}{suffix}"


def model_hashes(refs: dict[str, str | None]) -> dict[str, str]:
    """A short hash of each model folder's weight files (names, sizes, first MiB), or the hub id as given."""
    out = {}
    for name, ref in refs.items():
        if not ref:
            continue
        folder = Path(ref)
        if not folder.is_dir():
            out[name] = str(ref)
            continue
        h = hashlib.sha256()
        for f in sorted(folder.rglob("*.safetensors")):
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(str(f.stat().st_size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
        out[name] = h.hexdigest()[:16]
    return out


def manifest_line(item: Item, file: Path, weights: dict, rule: str | None, models: dict,
                  settings: dict | None = None) -> str:
    row = asdict(item)
    row.update(file=file.name, weights_used={k: v for k, v in (weights or {}).items()}, rule_applied=rule,
               models=models)
    if settings is not None:
        row["settings"] = settings
    return json.dumps(row, sort_keys=True)


def check_same_batch(done: dict[int, str], items: list[Item], settings: dict | None = None,
                     equivalent: dict | None = None, same: str = SAME_ITEMS) -> None:
    """One sentence if the finished items of a folder were made from other prompts, seeds or ``settings`` than
    ``items`` (a manifest line written before settings were recorded is checked for its item only)."""
    from .checks import said_changes, warn_unrecorded

    settings = None if settings is None else json.loads(json.dumps(settings))  # as JSON reads them back
    warned = set()
    for index, line in done.items():
        row = json.loads(line)
        old = row.get("settings")
        if settings is not None and old is not None:
            changed = changed_settings(old, settings, equivalent)
            if changed:
                raise UserError(f"the folder's images were made with other settings "
                                f"({said_changes(old, settings, changed)}): resume with the same flags, or choose "
                                f"another --output")
            warn_unrecorded(old, settings, warned)
        if index >= len(items) or Item(**{k: row.get(k) for k in ("index", "prompt", "seed", "domain_weight",
                                                                   "control_weight", "guidance_rule")},
                                       negative_prompt=row.get("negative_prompt") or "") != items[index]:
            raise UserError(f"the folder's batch was made from other prompts, seeds or settings (item {index}: "
                            f"{row.get('prompt')!r}, seed {row.get('seed')}): use {same} to resume it, or choose "
                            f"another --output")


def done_items(folder: Path) -> dict[int, str]:
    """``{item index: manifest line}`` for the items whose image and manifest line both exist."""
    out: dict[int, str] = {}
    for part in [folder / MANIFEST, *sorted(folder.glob("manifest.rank*.jsonl"))]:
        if not part.is_file():
            continue
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that item is made again
            if (folder / row.get("file", "")).is_file():
                out[int(row["index"])] = line
    return out
