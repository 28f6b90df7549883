"""The export's memory does not grow with the number of annotations it writes.

Python's allocations are traced (tracemalloc) while a batch is exported, for a batch and for
one six times larger: both peak at one chunk's worth of rows (EXPORT_CHUNK_SIZE), so the
larger may peak higher by less than 32 bytes per extra line, less than the smallest thing a
regression could keep per line (an int in a list costs 36 bytes). Loading every row, keeping
a set of ids seen, or leaving chunks for the garbage collector to find fails. The measure at
full scale (600,000 annotations, the process's resident memory) is bench/progress_export.py's.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterable

import pytest

from annotation_app.models import Annotation
from annotation_app.services.exports import EXPORT_CHUNK_SIZE, export_lines
from tests.bulk import build_batch

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


BYTES_PER_EXTRA_LINE = 32


def peak_while_reading(lines: Iterable[bytes | str]) -> tuple[int, int]:
    """(lines read, the peak of Python's allocations meanwhile, in bytes above the start)."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        count = sum(1 for _ in lines)
        return count, tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


@pytest.fixture
def batches():
    """A batch of about 900 annotations and one of about 5,500."""
    return (
        build_batch("memory-small", comparisons=500, annotators=6, seed=5),
        build_batch("memory-large", comparisons=3000, annotators=6, seed=6),
    )


def test_the_export_streams_in_memory_that_does_not_grow_with_the_annotations(batches):
    small, large = batches
    annotations = [Annotation.objects.filter(comparison__batch=b).count() for b in batches]
    assert annotations[0] > EXPORT_CHUNK_SIZE and annotations[1] > 5 * annotations[0]

    small_lines, small_peak = peak_while_reading(export_lines("canonical", [small]))
    large_lines, large_peak = peak_while_reading(export_lines("canonical", [large]))
    assert (small_lines, large_lines) == tuple(annotations)
    growth = large_peak - small_peak
    assert growth < BYTES_PER_EXTRA_LINE * (large_lines - small_lines), (small_peak, large_peak)


def test_the_api_streams_the_export_in_the_same_memory(batches, client, batch_admin):
    small, large = batches
    client.force_login(batch_admin)
    peaks, counts = [], []
    for batch in batches:
        response = client.get(f"/api/v1/export/?format=trl&batch={batch.pk}")
        assert response.status_code == 200 and response.streaming
        lines, peak = peak_while_reading(response.streaming_content)
        assert lines == Annotation.objects.filter(comparison__batch=batch).count()
        peaks.append(peak)
        counts.append(lines)
    assert peaks[1] - peaks[0] < BYTES_PER_EXTRA_LINE * (counts[1] - counts[0]), peaks
