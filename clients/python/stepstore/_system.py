"""System metrics sampled in the background (``system_metrics=True``):
CPU and memory of the machine and of the process, and GPU utilization and
memory when ``pynvml`` or ``nvidia-smi`` is there. Logged under
``system/*`` keys, one step per sample (as MLflow's system metrics are)."""

import os
import shutil
import subprocess
import threading
from typing import Dict, List, Optional

try:
    import psutil
except ImportError:
    psutil = None


class _ProcStat:
    """CPU use from /proc/stat (Linux, without psutil)."""

    def __init__(self):
        self._last = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as stat:
                fields = [int(value) for value in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def percent(self) -> Optional[float]:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] == last[0]:
            return None
        busy = (now[0] - last[0]) - (now[1] - last[1])
        return 100.0 * busy / (now[0] - last[0])


def _meminfo() -> Dict[str, float]:
    out = {}
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                name, _, rest = line.partition(":")
                out[name] = float(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _process_rss() -> Optional[float]:
    try:
        with open("/proc/self/statm") as statm:
            return float(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _gpus_from_nvml() -> Optional[List[Dict[str, float]]]:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            use = pynvml.nvmlDeviceGetUtilizationRates(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "utilization_percent": float(use.gpu),
                    "memory_used_mb": memory.used / 2**20,
                    "memory_percent": 100.0 * memory.used / memory.total if memory.total else 0.0,
                }
            )
        return gpus
    except Exception:  # no driver, no device: no GPU metrics
        return None


def _gpus_from_nvidia_smi() -> Optional[List[Dict[str, float]]]:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        output = subprocess.run(
            [
                binary,
                "--query-gpu=utilization.gpu,memory.used,memory.total",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in output.strip().splitlines():
        try:
            utilization, used, total = (float(part) for part in line.split(","))
        except ValueError:
            continue
        gpus.append(
            {
                "utilization_percent": utilization,
                "memory_used_mb": used,
                "memory_percent": 100.0 * used / total if total else 0.0,
            }
        )
    return gpus


def sample(proc_stat: Optional[_ProcStat] = None) -> Dict[str, float]:
    """One sample of every system metric available here."""
    values: Dict[str, float] = {}
    if psutil is not None:
        values["system/cpu_percent"] = float(psutil.cpu_percent(interval=None))
        memory = psutil.virtual_memory()
        values["system/memory_percent"] = float(memory.percent)
        values["system/memory_used_mb"] = (memory.total - memory.available) / 2**20
        values["system/process_rss_mb"] = psutil.Process().memory_info().rss / 2**20
    else:
        if proc_stat is not None:
            cpu = proc_stat.percent()
            if cpu is not None:
                values["system/cpu_percent"] = cpu
        meminfo = _meminfo()
        total, available = meminfo.get("MemTotal"), meminfo.get("MemAvailable")
        if total and available is not None:
            values["system/memory_percent"] = 100.0 * (total - available) / total
            values["system/memory_used_mb"] = (total - available) / 2**20
        rss = _process_rss()
        if rss is not None:
            values["system/process_rss_mb"] = rss / 2**20
    gpus = _gpus_from_nvml()
    if gpus is None:
        gpus = _gpus_from_nvidia_smi()
    for index, gpu in enumerate(gpus or []):
        for name, value in gpu.items():
            values[f"system/gpu.{index}.{name}"] = value
    return values


class SystemMetrics(threading.Thread):
    """Samples every ``interval`` seconds and hands each sample to ``log``."""

    def __init__(self, log, interval: float):
        super().__init__(name="stepstore-system-metrics", daemon=True)
        self._log = log
        self._interval = max(0.05, float(interval))
        self._stopping = threading.Event()
        self.samples = 0

    def run(self) -> None:
        proc_stat = _ProcStat() if psutil is None else None
        if psutil is not None:
            psutil.cpu_percent(interval=None)  # the first call only starts the count
        while not self._stopping.wait(self._interval):
            values = sample(proc_stat)
            if values:
                self._log(values, self.samples)
                self.samples += 1

    def stop(self) -> None:
        self._stopping.set()
        self.join(10.0)
