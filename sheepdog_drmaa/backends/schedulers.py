"""What differs between the schedulers behind DRMAA: ids, log names, options, limits, requests,
and the commands that list their jobs and hosts.

The DRMAA backend picks one of these from the implementation string the loaded libdrmaa reports,
runs the commands they name, and hands the output back to be parsed here: nothing in this module
runs a command. What the live scheduler offers (its queues, hosts and resources) is :mod:`.sites`'.
"""
from __future__ import annotations

import logging
import math
import re
import shlex
from collections.abc import Sequence
from xml.etree import ElementTree

from ..errors import ConfigurationError
from ..worker_ids import GridEngineIds, SlurmIds, WorkerIds
from . import WorkerSpec

log = logging.getLogger(__name__)


class Scheduler(WorkerIds):
    """Plain DRMAA, for an implementation this library was not tested with.

    A plain DRMAA job cannot learn its own id, so each worker is one job (not an array task) and is
    told the name it goes by; the backend keeps which job carries which name. How a worker finds
    its id (``variables``, ``separator``, ``worker_id``) each scheduler inherits from :mod:`..worker_ids`.
    """

    name = "generic"
    title = "the DRMAA scheduler"
    bulk = False                        # workers are tasks of array jobs, each finding its id in its environment
    log_id = ""                         # output path text that the scheduler turns into the worker's id
    queue_option = ""                   # the native option that names a queue; "" when unknown
    default_max_array_size = 1000
    config_command: tuple[str, ...] = ()  # prints the largest array; () when there is no such command
    hosts_command: tuple[str, ...] = ()  # prints the execution hosts' names; () when there is no such command
    remove_command = ""                 # removes jobs by id from the command line; "" when unknown
    removes_by_command = False          # True: every removal goes by remove_command, in the background
    cheap_wait_any = False              # True: wait(ANY) costs nothing per unreaped job, poll it often
    reports_usage = True                # resourceUsage holds real measurements
    active_states: frozenset[str] = frozenset()  # listed states of a job that has not ended
    killed_states: frozenset[str] = frozenset()  # listed states of a job the scheduler ended, whatever DRMAA says
    cancelled_queued_unseen = False     # wait() misses a job cancelled while queued (jobStatus "undetermined")
    already_gone: tuple[str, ...] = ()  # words of a control error that means "that job has ended", not "unreachable"
    removal_answers: tuple[str, ...] = ()  # words of each line remove_command prints for a job removed or gone

    def array_of(self, worker_id: str) -> str:
        """The id of the array job a worker (a task of it) belongs to; the worker itself without arrays."""
        return worker_id.split(self.separator, 1)[0] if self.separator else worker_id

    def max_array_size(self, config_text: str) -> int:
        """The largest array one bulk submission may ask for, from ``config_command``'s output."""
        return self.default_max_array_size

    def native_specification(self, spec: WorkerSpec) -> str | None:
        """The job template's nativeSpecification for queue=, the resources asked by name and
        native_spec= (which comes last: where it names the same option, the scheduler takes it)."""
        parts = []
        if spec.queue:
            if not self.queue_option:
                raise ConfigurationError(f"queue={spec.queue!r}: not known how to name a queue on {self.title}; "
                                         "pass its native option in native_spec= instead")
            parts.append(f"{self.queue_option} {spec.queue}")
        if spec.walltime is not None:
            parts.append(self.runtime_request(spec.walltime))
        parts += self.resource_requests(spec)
        if spec.native_spec:
            parts.append(spec.native_spec)
        return " ".join(parts) or None

    def runtime_request(self, seconds: float) -> str:
        """The native option asking for a runtime limit of at least ``seconds``."""
        raise ConfigurationError(f"walltime= cannot be requested from {self.title} by name; pass its own "
                                 "option in native_spec= (walltime= still guides which tasks a worker starts)")

    def resource_requests(self, spec: WorkerSpec) -> list[str]:
        """Native options for memory=, cores=, gpus=, project= and the hosts to avoid."""
        given = [name for name in ("memory", "cores", "gpus", "project") if getattr(spec, name) is not None]
        if given:
            raise ConfigurationError(f"{', '.join(n + '=' for n in given)} cannot be requested from {self.title} by "
                                     "name; pass its own options in native_spec= instead")
        return []

    def check_request(self, spec: WorkerSpec) -> None:
        """Refuse, before anything is submitted, a request this scheduler would not take as spelled
        (what the live scheduler offers is checked by :func:`.sites.check_request`)."""
        self.native_specification(spec)

    def listing_command(self, arrays: Sequence[str]) -> list[str] | None:
        """A command listing these arrays' tasks with their states in one query, or None (ask DRMAA per task)."""
        return None

    def parse_listing(self, text: str) -> dict[str, str]:
        """``listing_command``'s output as {worker id: state}."""
        return {}

    def started_command(self, arrays: Sequence[str]) -> list[str] | None:
        """A command listing the started tasks of these arrays with their hosts; None when not known how."""
        return None

    def parse_started(self, text: str) -> dict[str, str | None]:
        """``started_command``'s output as {worker id: host}; ValueError when it cannot be read."""
        return {}

    def removed(self, status: int, output: str) -> bool:
        """Whether ``remove_command``'s answer shows every target removed, or gone before it was asked (a
        command killed for hanging, status < 0, never does)."""
        lines = [line for line in output.splitlines() if line.strip()]
        return status == 0 or (status > 0 and bool(lines) and all(any(words in line for words in self.removal_answers)
                                                                  for line in lines))

    def stale_after_outage(self, arrays: Sequence[str]) -> str:
        """What to know of jobs that never reported their end after the scheduler was unreachable."""
        return f"their removal was asked for; `{self.removal_hint(arrays)}` removes whatever is left of them"

    def removal_hint(self, targets: Sequence[str]) -> str:
        """The command that removes ``targets`` by hand."""
        if not self.remove_command:
            return f"remove DRMAA jobs {' '.join(targets)} with the scheduler's own command"
        return f"{self.remove_command} {' '.join(targets)}"


class GridEngine(GridEngineIds, Scheduler):
    """Son of Grid Engine and its relatives: ids '49.3', qmaster pushes job ends to the DRMAA library."""

    name = "gridengine"
    title = "Grid Engine"
    bulk = True
    log_id = "$JOB_ID.$TASK_ID"
    queue_option = "-q"
    default_max_array_size = 75_000
    config_command = ("qconf", "-sconf")
    hosts_command = ("qconf", "-sel")
    remove_command = "qdel"
    # qdel exits 1 when one of several ids is gone, and says so on a line of its own (measured on 8.1.9).
    removal_answers = ("for deletion", "is already in deletion", "has deleted", "does not exist")
    cheap_wait_any = True

    def runtime_request(self, seconds: float) -> str:
        whole = math.ceil(seconds)
        return f"-l h_rt={whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"

    def resource_requests(self, spec: WorkerSpec) -> list[str]:
        """Grid Engine counts memory per slot (h_vmem becomes the limit times the slots of a parallel
        job), so memory= per worker is divided by cores=."""
        parts = []
        if spec.cores is not None:
            parts.append(f"-pe {spec.parallel_env} {spec.cores}")
        if spec.memory is not None:
            parts.append(f"-l {spec.memory_resource}={grid_engine_memory(spec.memory, spec.cores or 1)}")
        if spec.gpus is not None:
            parts.append(f"-l {GPU_COMPLEX}={spec.gpus}")
        if spec.project is not None:
            parts.append(f"-P {spec.project}")
        if spec.avoid_hosts:
            parts.append("-l h=" + "&".join(f"!{host}" for host in spec.avoid_hosts))
        return parts

    def check_request(self, spec: WorkerSpec) -> None:
        super().check_request(spec)
        # Grid Engine's DRMAA library cuts a job variable's value at its first "=" (measured).
        cut = sorted(name for name, value in spec.environment.items() if "=" in value)
        if cut:
            raise ConfigurationError(f"the job variable(s) {', '.join(cut)} contain '=', which Grid Engine's DRMAA "
                                     "library cuts off with the rest of the value; set them in a setup= line instead")

    def stale_after_outage(self, arrays: Sequence[str]) -> str:
        return ("Son of Grid Engine 8.1.9 goes on showing such jobs as running (state r, dr once removed) after they "
                "ended, holding their slots; their removal was asked for, and an administrator can clear what is "
                f"left with `qdel -f {' '.join(arrays)}`")

    def max_array_size(self, config_text: str) -> int:
        for line in config_text.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0] == "max_aj_tasks" and fields[1].isdigit() and int(fields[1]) > 0:
                return int(fields[1])
        return self.default_max_array_size

    def started_command(self, arrays: Sequence[str]) -> list[str] | None:
        return ["qstat", "-s", "r", "-xml"]  # this user's running and transferring tasks (r, t, Rr, dr...)

    def parse_started(self, text: str) -> dict[str, str | None]:
        started: dict[str, str | None] = {}
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError as error:
            raise ValueError(f"qstat -xml: {error}") from error
        for job in root.iter("job_list"):
            number, task = job.findtext("JB_job_number"), job.findtext("tasks")
            if number:
                host = (job.findtext("queue_name") or "").partition("@")[2]  # all.q@node3
                started[f"{number}.{task}" if task else number] = host or None
        return started


# Grid Engine spellings that Slurm refuses or reads otherwise, with what to write instead.
_GRID_ENGINE_SPELLINGS = {
    "-q": "-p/--partition (or queue=)",
    "-pe": "--cpus-per-task (-c)",
    "-notify": "--signal (e.g. --signal=USR2@60)",
    "-cwd": "nothing: Slurm jobs start in the submit directory",
    "-V": "nothing: Slurm copies the submit environment",
}
_GRID_ENGINE_RESOURCES = {
    # slurm-drmaa 1.1.6 reads -t itself, as H:MM[:SS] only (-t 5:00 is five hours there, five minutes
    # to sbatch; bare minutes such as -t 90 are refused).
    "h_rt": "--time (-t) as H:MM, e.g. -t 1:30 for 90 minutes (h_rt=3600 is -t 1:00)",
    "s_rt": "--time (-t) as H:MM, and --signal for the warning",
    "h_vmem": "--mem (per node) or --mem-per-cpu, e.g. --mem=4G",
    "s_vmem": "--mem (per node) or --mem-per-cpu, e.g. --mem=4G",
    "mem_free": "--mem (per node) or --mem-per-cpu, e.g. --mem=4G",
    "virtual_free": "--mem (per node) or --mem-per-cpu, e.g. --mem=4G",
}


class Slurm(SlurmIds, Scheduler):
    """Slurm through DRMAA for Slurm (slurm-drmaa): ids '238_4'; every wait(ANY) queries each unreaped job."""

    name = "slurm"
    title = "Slurm"
    bulk = True
    log_id = "%A_%a"
    queue_option = "-p"
    default_max_array_size = 1000
    config_command = ("scontrol", "show", "config")
    hosts_command = ("sinfo", "--noheader", "--Node", "--format=%N")
    remove_command = "scancel"
    # slurm-drmaa's control() waits 9 s for a slurmctld that is down before it fails (measured): a
    # removal asked at a sweep's end would hold the sweep that long beyond outage_wait.
    removes_by_command = True
    # slurm-drmaa 1.1.6 raises the InternalException of an unreachable controller also for a job that
    # has ended (measured): these words tell the two apart.
    already_gone = ("already completing or completed", "Invalid job id specified")
    reports_usage = False  # slurm-drmaa 1.1.6 reports zeros only
    # Until Slurm purges its record (MinJobAge, 300 s by default).
    cancelled_queued_unseen = True
    active_states = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING",
                               "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT",
                               "STOPPED", "SPECIAL_EXIT", "POWER_UP_NODE", "UPDATE_DB"})
    # Slurm ended the task (its limits, a node, scancel) even when slurm-drmaa says "exit 0", as it
    # does for a cancelled whole array or, racing, for a task over --time.
    killed_states = frozenset({"CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "DEADLINE",
                               "BOOT_FAIL"})

    def max_array_size(self, config_text: str) -> int:
        # Array indices run below MaxArraySize; arrays here are numbered from 1.
        found = re.search(r"^MaxArraySize\s*=\s*(\d+)", config_text, re.MULTILINE)
        return max(int(found.group(1)) - 1, 1) if found else self.default_max_array_size

    def native_specification(self, spec: WorkerSpec) -> str | None:
        """Refuses Grid Engine spellings before anything is submitted, naming the Slurm option. Workers
        are not requeued (Slurm's JobRequeue=1 default requeues a job whose node failed): the sweep
        retries their tasks itself, and a requeued worker would be a second one under the same id.
        A native_spec= asking for --requeue has it (a requeued worker is then told to exit)."""
        if spec.native_spec:
            _refuse_grid_engine_spellings(spec.native_spec)
        own = super().native_specification(spec)
        if "--requeue" in (spec.native_spec or "").split():
            return own
        return f"{own} --no-requeue" if own else "--no-requeue"

    def resource_requests(self, spec: WorkerSpec) -> list[str]:
        """slurm-drmaa 1.1.6 takes --mem as a number of MB only ("1G" is refused), and hands --gres to
        Slurm as the job's TRES per node, which Slurm 22.05 accepts only as gres:gpu:N."""
        parts = []
        if spec.cores is not None:
            parts.append(f"--cpus-per-task={spec.cores}")
        if spec.memory is not None:
            parts.append(f"--mem={math.ceil(spec.memory / (1 << 20))}")
        if spec.gpus is not None:
            parts.append(f"--gres=gres:gpu:{spec.gpus}")
        if spec.project is not None:
            parts.append(f"--account={spec.project}")
        if spec.avoid_hosts:
            parts.append("--exclude=" + ",".join(spec.avoid_hosts))
        return parts

    def runtime_request(self, seconds: float) -> str:
        # slurm-drmaa reads -t as H:MM (whole minutes), so the limit is rounded up to one.
        minutes = max(1, math.ceil(seconds / 60))
        return f"-t {minutes // 60}:{minutes % 60:02d}"

    def listing_command(self, arrays: Sequence[str]) -> list[str] | None:
        return ["squeue", "--noheader", "--array", "--states=all", "--format=%i %T", "--jobs=" + ",".join(arrays)]

    def parse_listing(self, text: str) -> dict[str, str]:
        states = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 2:
                states[fields[0]] = fields[1]
        return states

    def started_command(self, arrays: Sequence[str]) -> list[str] | None:
        return ["squeue", "--noheader", "--array", "--states=RUNNING,CONFIGURING,COMPLETING", "--format=%i %N",
                "--jobs=" + ",".join(arrays)]

    def parse_started(self, text: str) -> dict[str, str | None]:
        started: dict[str, str | None] = {}
        for line in text.splitlines():
            fields = line.split()
            if fields:
                started[fields[0]] = fields[1] if len(fields) > 1 and fields[1] not in ("(null)", "n/a") else None
        return started


def _refuse_grid_engine_spellings(native_spec: str) -> None:
    try:
        words = shlex.split(native_spec)
    except ValueError as error:
        raise ConfigurationError(f"native_spec={native_spec!r} cannot be split into options: {error}") from error
    for position, word in enumerate(words):
        if word in _GRID_ENGINE_SPELLINGS:
            raise ConfigurationError(f"native_spec={native_spec!r}: {word} is Grid Engine's spelling; on Slurm "
                                     f"use {_GRID_ENGINE_SPELLINGS[word]}")
        if word == "-l":
            following = words[position + 1] if position + 1 < len(words) else ""
            resource = following.split("=", 1)[0]
            instead = _GRID_ENGINE_RESOURCES.get(resource, "--mem, --time, --gres or --constraint")
            raise ConfigurationError(f"native_spec={native_spec!r}: -l {following} is Grid Engine's spelling; "
                                     f"Slurm has no -l: use {instead}")


def identify(implementation: str, drms: str) -> Scheduler:
    """The scheduler behind the loaded libdrmaa, from its DRMAA implementation and DRMS strings."""
    text = f"{implementation} {drms}".lower()
    if "slurm" in text:
        return Slurm()
    if re.search(r"grid ?engine|\bsge\b|\bge\b|\buge\b|\bogs\b", text):
        return GridEngine()
    log.warning("the DRMAA library reports %r (%r), a scheduler sheepdog_drmaa was not tested on; using plain "
                "DRMAA, which may not work (worker ids, log names and queue= are scheduler-specific)",
                implementation, drms)
    return Scheduler()


GPU_COMPLEX = "gpu"  # the Grid Engine complex gpus= asks for


def grid_engine_memory(memory: int, slots: int) -> str:
    """A Grid Engine memory value for ``memory`` bytes shared by ``slots`` slots (whole MB, rounded up)."""
    return f"{math.ceil(memory / slots / (1 << 20))}M"
