"""Write src/test/resources/flatc-sample.ptd with executorch's own FlatTensorSerializer (flatc).

The Kotlin PtdFile reader test reads this file, so the reader is checked against flatc's output,
not only against the Kotlin writer. Run with the project venv (executorch installed):

    /work/venv/bin/python android_demo/core/tools/make_ptd_fixture.py
"""
from pathlib import Path

from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
from executorch.exir.scalar_type import ScalarType
from executorch.exir.tensor_layout import TensorLayout
from executorch.extension.flat_tensor.serialize.serialize import FlatTensorConfig, FlatTensorSerializer

out = Path(__file__).resolve().parent.parent / "src/test/resources/flatc-sample.ptd"
buffers = [bytes(range(1, 11)), bytes([0xAB] * 200), b""]
named = {
    "first": DataEntry(0, 16, None),
    "0123456789abcdef" * 4: DataEntry(1, 16, TensorLayout(ScalarType.FLOAT, [10, 5], [0, 1])),
    "empty": DataEntry(2, 16, None),
}
blob = FlatTensorSerializer(FlatTensorConfig()).serialize(DataPayload(buffers=buffers, named_data=named))
out.write_bytes(bytes(blob))
print(out, len(bytes(blob)))
