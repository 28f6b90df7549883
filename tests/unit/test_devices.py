"""rlhf.nn.devices.keep_freed_memory: the large tensors a step frees serve the next step's."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

# Steps that allocate and free large tensors whose sizes vary a little from step to step, as a
# training step's logits and gradients do; prints the page faults per step once warmed up.
STEPS = """
import random, resource, sys
import torch
from rlhf.nn.devices import keep_freed_memory
kept = keep_freed_memory(torch.device("cpu")) if sys.argv[1] == "keep" else False
sizes = random.Random(0)

def step():
    logits = torch.ones((64 + sizes.randint(0, 16)) << 18)  # 64-80 MiB
    gradient = torch.ones((32 + sizes.randint(0, 16)) << 18)
    del logits
    other = torch.ones((16 + sizes.randint(0, 16)) << 18)

for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 20)
"""
PAGES_PER_STEP = (72 + 40 + 24) << 8  # the mean sizes, in 4 KiB pages


ALLOCATOR_SETTINGS = (
    "LD_PRELOAD",
    "GLIBC_TUNABLES",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
)


def faults_per_step(mode: str) -> tuple[str, int]:
    """Run STEPS in a process with glibc's own allocator settings."""
    environment = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_SETTINGS}
    done = subprocess.run(
        [sys.executable, "-c", STEPS, mode],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    )
    kept, count = done.stdout.split()
    return kept, int(count)


def huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: a fresh block then costs few faults."""
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.is_file() and "[always]" in path.read_text()


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or os.sysconf("SC_PAGE_SIZE") != 4096 or huge_pages_always(),
    reason="counts glibc's page faults on 4 KiB pages",
)
def test_freed_tensors_are_not_faulted_in_again_at_the_next_step():
    kept, count = faults_per_step("default")
    assert kept == "False" and count > PAGES_PER_STEP // 2  # glibc hands them back each time
    kept, count = faults_per_step("keep")
    if kept == "False":
        pytest.skip("this glibc refuses a mmap threshold above 32 MiB")
    assert count < PAGES_PER_STEP // 20
