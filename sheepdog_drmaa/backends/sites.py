"""What the live scheduler offers, and the check of a request against it.

:mod:`.schedulers` says how each scheduler spells a request; this module asks the running one
(``qconf`` on Grid Engine, ``sinfo`` on Slurm) whether any queue and host could ever run it, so that
a request no host can take (cores=, memory=, gpus= beyond every host; an unknown queue, parallel
environment or project) is refused with the site's own names before anything is submitted. A
command that fails is not held against the request: the submission then says what is wrong.
The commands are asked a round at a time, each round at once, and their answers are remembered
for a few minutes (:mod:`.answers`); a refusal is only ever made on answers asked afresh.
"""
from __future__ import annotations

import fnmatch
import functools
import logging
import math
import os
import re
import shlex
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigurationError
from ..failures import format_size
from . import WorkerSpec
from .answers import Answers, Command
from .schedulers import GPU_COMPLEX, GridEngine, Scheduler, Slurm

log = logging.getLogger(__name__)

_UNITS = {"k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4,
          "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_grid_engine_memory(text: str) -> float:
    """Bytes from a Grid Engine memory value ("8G", "512M", "1.5g", "INFINITY"; K M G T binary, k m g t decimal)."""
    text = text.strip()
    if text.upper() in ("INFINITY", "NONE", ""):
        return math.inf
    scale = _UNITS.get(text[-1], 1)
    return float(text[:-1] if text[-1] in _UNITS else text) * scale


def _per_host(value: str, host: str, groups: dict[str, set[str]]) -> str:
    """A queue attribute for one host: "8,[vm=4],[@gpu=2]" -> "4" on vm (host over group over default)."""
    default, _, overrides = value.partition(",[")
    chosen: str = default.strip()
    by_group: str | None = None
    for override in re.findall(r"\[([^=\]]+)=([^\]]*)\]", "[" + overrides if overrides else ""):
        name, setting = str(override[0]).strip(), str(override[1]).strip()
        if name == host:
            return setting
        if name.startswith("@") and host in groups.get(name, set()):
            by_group = setting
    return by_group if by_group is not None else chosen


def _assignments(text: str) -> dict[str, str]:
    """ "h_vmem=8G,gpu=2" (or NONE) -> {"h_vmem": "8G", "gpu": "2"}."""
    pairs = (item.split("=", 1) for item in text.replace(" ", "").split(",") if "=" in item)
    return {name: value for name, value in pairs}


def _listing(text: str) -> dict[str, str]:
    """qconf -sq/-se/-sp output as {attribute: value}, continuation lines joined."""
    attributes: dict[str, str] = {}
    for line in text.replace("\\\n", " ").splitlines():
        name, _, value = line.strip().partition(" ")
        if name and not name.startswith("#"):
            attributes[name] = " ".join(value.split())
    return attributes


def _native_words(native_spec: str | None) -> list[str]:
    try:
        return shlex.split(native_spec or "")
    except ValueError:
        return []


def _native_option(words: list[str], option: str) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == option]


def _command_output(command: Command) -> str | None:
    """A scheduler command's output, or None when it fails (then nothing is checked against it)."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        log.debug("cannot run %s: %s", " ".join(command), error)
        return None
    if result.returncode != 0:
        log.debug("%s failed: %s", " ".join(command), (result.stderr or result.stdout).strip())
        return None
    return result.stdout


@functools.cache
def _answers(key: str) -> Answers:
    """The answers of the scheduler ``key`` names (this host, and which cell or cluster), shared by this
    process's sweeps."""
    return Answers(key, _command_output)


@dataclass(frozen=True)
class Host:
    """An execution host: its name as the scheduler knows it, and the name or address it is reached at."""

    name: str
    address: str


class _Site:
    """A scheduler's answers to the commands that describe it (see :mod:`.answers`)."""

    def __init__(self, key: str) -> None:
        self.answers = _answers(key)

    def read(self, *command: str) -> str | None:
        return self.answers.read(*command)

    def check(self, spec: WorkerSpec) -> None:
        raise NotImplementedError

    def hosts(self, spec: WorkerSpec) -> list[Host] | None:
        raise NotImplementedError


_ALL_QUEUES = ("qconf", "-sq", "*")  # every cluster queue's configuration in one command (a round fewer)


@functools.lru_cache(maxsize=4)
def _queue_listings(text: str) -> dict[str, dict[str, str]]:
    """``qconf -sq '*'`` output (one block per queue, each beginning with qname) as {queue: {attribute: value}}."""
    queues = (_listing(block) for block in re.split(r"\n(?=qname\s)", text))
    return {queue["qname"]: queue for queue in queues if queue.get("qname")}


class GridEngineSite(_Site):
    """What this Grid Engine cell offers (queues, parallel environments, complexes, hosts), read with
    qconf, and the check of a request against it."""

    def __init__(self) -> None:
        super().__init__(f"gridengine {socket.gethostname()} {os.environ.get('SGE_ROOT', '')} "
                         f"{os.environ.get('SGE_CELL') or 'default'}")

    def names(self, *command: str) -> list[str]:
        return (self.read(*command) or "").split()

    def complexes(self) -> dict[str, list[str]]:
        """{name: the fields of its qconf -sc line}, under its name and its shortcut."""
        found = {}
        for line in (self.read("qconf", "-sc") or "").splitlines():
            fields = line.split()
            if len(fields) >= 8 and not line.startswith("#"):
                found[fields[0]] = found[fields[1]] = fields
        return found

    def check(self, spec: WorkerSpec) -> None:
        words = _native_words(spec.native_spec)
        with_pe = spec.cores is not None and "-pe" not in words
        # With them, what the DRMAA backend reads of the site (largest array, execution hosts).
        self.answers.fetch(_ALL_QUEUES, ("qconf", "-sc"), ("qconf", "-se", "global"), GridEngine.config_command,
                           GridEngine.hosts_command,
                           *([("qconf", "-spl"), ("qconf", "-sp", spec.parallel_env)] if with_pe else []),
                           *([("qconf", "-sprjl")] if spec.project is not None else []))
        all_queues = list(self._all_queues())
        if not all_queues:
            return  # qmaster did not answer: the submission will say what is wrong
        asked = _asked_queue(words, spec)
        queues = self._queues(asked, all_queues) if asked else all_queues
        complexes = self.complexes()
        if with_pe:
            self._check_parallel_env(spec, queues)
            queues = self._offering(queues, spec.parallel_env)
        if spec.memory is not None and spec.memory_resource not in complexes:
            memory = sorted({f[0] for f in complexes.values() if f[2] == "MEMORY"})
            raise ConfigurationError(f"memory_resource={spec.memory_resource!r}: Grid Engine has no such complex; its "
                                     f"memory complexes are {', '.join(memory)} (qconf -sc)")
        if spec.gpus is not None:
            self._check_gpu_complex(spec, complexes)
        if spec.project is not None:
            projects = self.names("qconf", "-sprjl")
            if spec.project not in projects:
                raise ConfigurationError(f"project={spec.project!r}: Grid Engine knows no such project; "
                                         + (f"its projects are {', '.join(projects)}" if projects else
                                            "it has no projects (qconf -sprjl)"))
        self._check_hosts(spec, self._taking(queues, words, complexes), asked, complexes)

    def hosts(self, spec: WorkerSpec) -> list[Host] | None:
        """The hosts of the queues that could take the request's jobs; None when qmaster did not answer."""
        words = _native_words(spec.native_spec)
        self.answers.fetch(_ALL_QUEUES, ("qconf", "-sc"))
        all_queues = list(self._all_queues())
        if not all_queues:
            return None
        asked = _asked_queue(words, spec)
        try:
            queues = self._queues(asked, all_queues) if asked else all_queues
        except ConfigurationError:
            return None  # the check says what is wrong with the queue
        if spec.cores is not None and "-pe" not in words:
            queues = self._offering(queues, spec.parallel_env)
        queues = self._taking(queues, words, self.complexes())
        self.answers.fetch(*(("qconf", "-shgrp_resolved", group) for queue in queues for group in
                             self._group_names(queue)))
        names = dict.fromkeys(host for queue in queues for host in self._hosts(queue))
        return [Host(name, name) for name in names]

    def _offering(self, queues: list[str], parallel_env: str) -> list[str]:
        """The queues that parallel environment ``parallel_env`` is attached to (their pe_list)."""
        return [q for q in queues if parallel_env in re.split(r"[\s,\[\]=]+", self._queue(q).get("pe_list", ""))]

    def _taking(self, queues: list[str], words: list[str], complexes: dict[str, list[str]]) -> list[str]:
        """The queues that take the job: a queue whose FORCED complex the job does not request takes none."""
        named = {name.split("=")[0] for value in _native_option(words, "-l") for name in value.split(",")}
        requested = {complexes[name][0] if name in complexes else name for name in named}  # shortcuts too
        forced = {f[0] for f in complexes.values() if f[4] == "FORCED"}
        return [q for q in queues if not (set(_assignments(self._queue(q).get("complex_values", ""))) & forced)
                or set(_assignments(self._queue(q).get("complex_values", ""))) & forced & requested]

    def _queues(self, asked: str, all_queues: list[str]) -> list[str]:
        """The queues ``asked`` names ("all.q", "a.q,b.q", "*.q", "all.q@vm"); unknown names refused."""
        chosen = []
        for name in asked.split(","):
            pattern = name.split("@", 1)[0]
            matched = fnmatch.filter(all_queues, pattern)
            if not matched:
                raise ConfigurationError(f"queue {pattern!r}: Grid Engine has no such queue; its queues are "
                                         f"{', '.join(all_queues)} (qconf -sql lists them)")
            chosen += matched
        return chosen

    def _all_queues(self) -> dict[str, dict[str, str]]:
        """Every cluster queue's configuration, by name."""
        return _queue_listings(self.read(*_ALL_QUEUES) or "")

    def _queue(self, name: str) -> dict[str, str]:
        return self._all_queues().get(name, {})

    def _check_parallel_env(self, spec: WorkerSpec, queues: list[str]) -> None:
        environments = self.names("qconf", "-spl")
        if spec.parallel_env not in environments:
            known = ", ".join(environments) if environments else "none (qconf -spl lists none)"
            raise ConfigurationError(f"parallel_env={spec.parallel_env!r} (for cores={spec.cores}): Grid Engine has no "
                                     f"such parallel environment; its parallel environments are {known}")
        attached = self._offering(queues, spec.parallel_env)
        if not attached:
            raise ConfigurationError(f"parallel_env={spec.parallel_env!r} (for cores={spec.cores}) is not attached to "
                                     f"queue {', '.join(queues)} (its pe_list); choose another parallel_env= or queue=")
        pe_slots = _listing(self.read("qconf", "-sp", spec.parallel_env) or "").get("slots", "")
        if pe_slots.isdigit() and (spec.cores or 1) > int(pe_slots):
            raise ConfigurationError(f"cores={spec.cores}: parallel environment {spec.parallel_env!r} has only "
                                     f"{pe_slots} slots in all; ask for at most that")

    def _check_gpu_complex(self, spec: WorkerSpec, complexes: dict[str, list[str]]) -> None:
        if GPU_COMPLEX not in complexes:
            consumable = sorted({f[0] for f in complexes.values() if f[2] == "INT" and f[5] != "NO"})
            raise ConfigurationError(f"gpus={spec.gpus}: Grid Engine has no complex {GPU_COMPLEX!r}; its countable "
                                     f"consumables are {', '.join(consumable) or 'none'} (qconf -sc); ask for your "
                                     "site's own with native_spec='-l NAME=N'")
        if complexes[GPU_COMPLEX][5] == "YES" and spec.gpus and spec.cores and spec.cores > 1:
            raise ConfigurationError(f"gpus={spec.gpus} with cores={spec.cores}: Grid Engine counts complex "
                                     f"{GPU_COMPLEX!r} per slot (consumable YES), so this would ask for "
                                     f"{spec.gpus * spec.cores} GPUs; make it consumable JOB, or ask with "
                                     "native_spec=")

    def _check_hosts(self, spec: WorkerSpec, queues: list[str], asked: str, complexes: dict[str, list[str]]) -> None:
        """Refuse what no host of these queues can ever give: the slots, the memory, the GPUs."""
        self.answers.fetch(*(("qconf", "-shgrp_resolved", group) for queue in queues for group in
                             self._group_names(queue)))
        self.answers.fetch(*(("qconf", "-se", host) for queue in queues for host in self._hosts(queue)))
        offers = [self._host_offer(q, host, spec) for q in queues for host in self._hosts(q)]
        where = f"queue {asked}" if asked else "any queue"
        if not offers:
            return
        slots = spec.cores or 1
        if max(o[0] for o in offers) < slots:
            raise ConfigurationError(f"cores={slots}: no host of {where} has that many slots (the most is "
                                     f"{max(o[0] for o in offers):g}); ask for fewer")
        if spec.memory is not None:
            most = max(o[1] for o in offers)
            if most < spec.memory:
                raise ConfigurationError(f"memory={format_size(spec.memory)}: no host of {where} offers that much "
                                         f"{spec.memory_resource} (the most is {format_size(int(most))}); ask for less")
        if spec.gpus is not None:
            most = max(o[2] for o in offers)
            if most < spec.gpus:
                having = f"the most is {most:g}" if most else f"none has any {GPU_COMPLEX!r}"
                raise ConfigurationError(f"gpus={spec.gpus}: no host of {where} has that many ({having})")

    def _hosts(self, queue: str) -> list[str]:
        hosts = []
        for entry in self._queue(queue).get("hostlist", "").split():
            hosts += self.names("qconf", "-shgrp_resolved", entry) if entry.startswith("@") else [entry]
        return [h for h in hosts if h != "NONE"]

    def _groups(self, queue: str) -> dict[str, set[str]]:
        settings = " ".join(self._queue(queue).values())
        return {g: set(self.names("qconf", "-shgrp_resolved", g)) for g in set(re.findall(r"\[(@[^=\]]+)=", settings))}

    def _group_names(self, queue: str) -> list[str]:
        """The host groups a queue's host list and per-host settings name."""
        settings = self._queue(queue)
        named = [entry for entry in settings.get("hostlist", "").split() if entry.startswith("@")]
        return named + re.findall(r"\[(@[^=\]]+)=", " ".join(settings.values()))

    def _host_offer(self, queue: str, host: str, spec: WorkerSpec) -> tuple[float, float, float]:
        """(slots, memory in bytes, GPUs) that one queue instance could ever give one job."""
        settings, groups = self._queue(queue), self._groups(queue)
        execution = _listing(self.read("qconf", "-se", host) or "")
        capacity = {**_assignments(_listing(self.read("qconf", "-se", "global") or "").get("complex_values", "")),
                    **_assignments(execution.get("complex_values", ""))}
        load = _assignments(execution.get("load_values", ""))
        slots = float(_per_host(settings.get("slots", "0"), host, groups) or 0)
        if capacity.get("slots", "").isdigit():
            slots = min(slots, float(capacity["slots"]))
        memory = min(parse_grid_engine_memory(_per_host(settings.get(spec.memory_resource, "INFINITY"), host, groups))
                     * (spec.cores or 1),
                     parse_grid_engine_memory(capacity.get(spec.memory_resource, "INFINITY")),
                     parse_grid_engine_memory(load.get("virtual_total", "INFINITY")))
        queue_capacity = _assignments(_per_host(settings.get("complex_values", ""), host, groups))
        gpus = min(float(capacity.get(GPU_COMPLEX, "0") or 0),
                   float(queue_capacity.get(GPU_COMPLEX, "inf") or "inf"))
        return slots, memory, gpus


_PARTITIONS = ("sinfo", "--noheader", "--format=%P")


class SlurmSite(_Site):
    """What this Slurm cluster offers (partitions, their nodes' CPUs, memory and GPUs), read with
    sinfo, and the check of a request against it."""

    def __init__(self) -> None:
        super().__init__(f"slurm {socket.gethostname()} {os.environ.get('SLURM_CONF', '')} "
                         f"{os.environ.get('SLURM_CLUSTERS', '')}")

    def check(self, spec: WorkerSpec) -> None:
        chosen = self._partitions(spec)
        if chosen is None:
            return  # slurmctld did not answer: the submission will say what is wrong
        nodes = [n for n in self._nodes(chosen) if n[0] not in spec.avoid_hosts]
        if not nodes:
            return
        where = f"partition {','.join(chosen)}"
        most_cpus = max((int(n[1]) for n in nodes if n[1].isdigit()), default=None)  # None: not reported
        if spec.cores is not None and most_cpus is not None and spec.cores > most_cpus:
            raise ConfigurationError(f"cores={spec.cores}: no node of {where} has that many CPUs (the most is "
                                     f"{most_cpus}); ask for fewer")
        most_mb = max((int(n[2]) for n in nodes if n[2].isdigit()), default=None)
        if spec.memory is not None and most_mb is not None:
            most = most_mb << 20
            if spec.memory > most:
                raise ConfigurationError(f"memory={format_size(spec.memory)}: no node of {where} has that much "
                                         f"(the most is {format_size(most)}, RealMemory); ask for less")
        if spec.gpus is not None:
            most_gpus = max(_gpu_count(n[3]) for n in nodes)
            if spec.gpus > most_gpus:
                having = f"the most is {most_gpus}" if most_gpus else "none has a gres gpu"
                raise ConfigurationError(f"gpus={spec.gpus}: no node of {where} has that many GPUs ({having})")

    def hosts(self, spec: WorkerSpec) -> list[Host] | None:
        """The nodes of the partitions the request's jobs go to, each with its NodeAddr; None when
        slurmctld did not answer."""
        try:
            chosen = self._partitions(spec)
        except ConfigurationError:
            return None  # the check says what is wrong with the partition
        if chosen is None:
            return None
        nodes = {n[0]: n[4] for n in self._nodes(chosen)}
        return [Host(name, address) for name, address in nodes.items()]

    def _partitions(self, spec: WorkerSpec) -> list[str] | None:
        """The partitions the request names, or else the default one; an unknown one refused; None when
        slurmctld did not answer."""
        words = _native_words(spec.native_spec)
        asked = ([w.split("=", 1)[1] for w in words if w.startswith("--partition=")] + _native_option(words, "-p")
                 + _native_option(words, "--partition") or [spec.queue or ""])[-1]
        # Partitions named in the request are listed in the same round as the partitions themselves.
        self.answers.fetch(_PARTITIONS, *(_nodes_of(part) for part in asked.split(",") if part),
                           Slurm.config_command, Slurm.hosts_command)  # what the DRMAA backend reads too
        listing = self.read(*_PARTITIONS)
        if listing is None:
            return None
        partitions = [p.rstrip("*") for p in listing.split()]
        default = [p.rstrip("*") for p in listing.split() if p.endswith("*")]
        for name in asked.split(","):
            if name and name not in partitions:
                raise ConfigurationError(f"queue={name!r}: Slurm has no such partition; its partitions are "
                                         f"{', '.join(partitions)} (sinfo)")
        return asked.split(",") if asked else default or partitions

    def _nodes(self, partitions: list[str]) -> list[list[str]]:
        """The nodes of ``partitions``: [name, CPUs, memory in MB, gres, NodeAddr] each."""
        self.answers.fetch(*(_nodes_of(part) for part in partitions))
        nodes = [line.split("|") for part in partitions for line in (self.read(*_nodes_of(part)) or "").splitlines()]
        return [n for n in nodes if len(n) == 5]


def _nodes_of(partition: str) -> Command:
    """The command listing a partition's nodes: name|CPUs|memory in MB|gres|NodeAddr."""
    return ("sinfo", "--noheader", "--Node", f"--partition={partition}", "--format=%N|%c|%m|%G|%o")


def _gpu_count(gres: str) -> int:
    """GPUs in sinfo's %G: "gpu:2", "gpu:a100:4(S:0-1)", "gpu:2,shard:8", "(null)"."""
    total = 0
    for item in gres.split(","):
        fields = re.sub(r"\(.*?\)", "", item).split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def _asked_queue(words: list[str], spec: WorkerSpec) -> str:
    """The Grid Engine queue list the request names ("" for any queue): -q in native_spec= wins."""
    return (_native_option(words, "-q") or [spec.queue or ""])[-1]


def _site_of(scheduler: Scheduler) -> _Site | None:
    if isinstance(scheduler, GridEngine):
        return GridEngineSite()
    if isinstance(scheduler, Slurm):
        return SlurmSite()
    return None


def check_request(scheduler: Scheduler, spec: WorkerSpec) -> None:
    """Refuse, before anything is submitted, a request this site's scheduler could never run
    (nothing is checked on plain DRMAA). A refusal made on remembered answers is checked again on
    answers asked afresh: only that one is raised."""
    site = _site_of(scheduler)
    if site is None:
        return
    began = site.answers.now()
    try:
        site.check(spec)
    except ConfigurationError as refusal:
        if not site.answers.forget_older_than(began):
            raise
        log.debug("refused on remembered answers (%s); asking the scheduler again", refusal)
        site.check(spec)


def request_hosts(scheduler: Scheduler, spec: WorkerSpec) -> list[Host] | None:
    """The execution hosts that could run ``spec``'s workers (those of the queue or partition it asks
    for, or else the default ones); None when they cannot be listed."""
    site = _site_of(scheduler)
    return site.hosts(spec) if site is not None else None


def exclusions(scheduler: Scheduler, spec: WorkerSpec) -> tuple[str, ...]:
    """The hosts of ``spec.avoid_hosts`` that may be excluded from its submission: those the scheduler
    knows among the request's hosts, unless that excludes every one of them (the job could then
    never run, or Slurm refuses it): then none, and a warning says so. Unchanged when the hosts
    cannot be listed."""
    if not spec.avoid_hosts:
        return ()
    hosts = request_hosts(scheduler, spec)
    if not hosts:
        return spec.avoid_hosts
    names = {host.name for host in hosts}
    known = tuple(host for host in spec.avoid_hosts if host in names)
    if len(known) < len(spec.avoid_hosts):
        log.warning("not excluding %s: %s does not list %s among the hosts of this request",
                 ", ".join(h for h in spec.avoid_hosts if h not in names), scheduler.title,
                 "it" if len(spec.avoid_hosts) - len(known) == 1 else "them")
    if known and names <= set(known):
        log.warning("every host this request can run on is to be avoided (%s); submitting without excluding any, "
                    "so that the workers can run at all", ", ".join(known))
        return ()
    return known


def read(scheduler: Scheduler, command: Sequence[str]) -> str | None:
    """The output of another command that describes the site (its execution hosts, its largest array),
    None when it failed: remembered, like the checks' answers, for the sweeps that follow."""
    site = _site_of(scheduler)
    return site.read(*command) if site is not None else _command_output(tuple(command))
