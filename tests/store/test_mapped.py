"""store.mapped: an Arrow IPC file read by position, batch by batch, with its pages handed back."""

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from nagindex.store.mapped import MappedArrow


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.data())
def test_take_across_batches_equals_a_plain_take(tmp_path_factory, sizes, data):
    path = tmp_path_factory.mktemp("mapped") / "t.arrow"
    n = sum(sizes)
    table = pa.table({"id": [f"d{i}" for i in range(n)], "x": np.arange(n, dtype=np.int64) * 3})
    with pa.ipc.new_file(str(path), table.schema) as writer:
        start = 0
        for size in sizes:  # one record batch per size
            writer.write_table(table.slice(start, size))
            start += size
    mapped = MappedArrow(path)
    assert len(mapped) == n and mapped.table.column("id").num_chunks == len(sizes)
    positions = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=3 * n)), dtype=np.int64)
    want = table.take(pa.array(positions, pa.int64()))
    assert mapped.take(positions).equals(want)
    assert mapped.take_sorted(np.sort(positions)).equals(table.take(pa.array(np.sort(positions), pa.int64())))
    mapped.release()  # the pages go, the data stays readable
    assert mapped.take(positions).equals(want)
