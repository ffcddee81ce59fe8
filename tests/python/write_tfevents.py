"""Writes TensorBoard event files with tensorboardX for tests/tensorboard_import.rs.

Usage: write_tfevents.py LOGDIR

- LOGDIR/baseline: `add_scalar` (simple_value) for train/loss and train/acc,
  steps 0..499, wall time 1_700_000_000 + step / 4 seconds; train/loss is
  NaN at step 250 and +Infinity at step 300.
- LOGDIR/sweep/lr_0.1: rank-0 tensor scalars (TF2 style: DT_FLOAT in
  float_val, and DT_DOUBLE in tensor_content) for eval/acc, steps 0, 10, ..., 90,
  plus a non-scalar (rank-1) tensor that must be skipped.
"""

import struct
import sys

from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.proto.tensor_pb2 import TensorProto
from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

logdir = sys.argv[1]
BASE = 1_700_000_000.0

writer = SummaryWriter(f"{logdir}/baseline")
for step in range(500):
    loss = 1.0 / (step + 1)
    if step == 250:
        loss = float("nan")
    if step == 300:
        loss = float("inf")
    writer.add_scalar("train/loss", loss, step, walltime=BASE + step / 4)
    writer.add_scalar("train/acc", step / 500, step, walltime=BASE + step / 4)
writer.close()

writer = SummaryWriter(f"{logdir}/sweep/lr_0.1")
file_writer = writer._get_file_writer()
metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
for index in range(10):
    step = index * 10
    if index % 2 == 0:
        tensor = TensorProto(dtype=1, tensor_shape=TensorShapeProto(), float_val=[index / 8])
    else:
        tensor = TensorProto(
            dtype=2, tensor_shape=TensorShapeProto(), tensor_content=struct.pack("<d", index / 8)
        )
    vector = TensorProto(
        dtype=1,
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=2)]),
        float_val=[1.0, 2.0],
    )
    summary = Summary(
        value=[
            Summary.Value(tag="eval/acc", tensor=tensor, metadata=metadata),
            Summary.Value(tag="eval/vector", tensor=vector),
        ]
    )
    file_writer.add_summary(summary, step, walltime=BASE + 1000 + step)
writer.close()
