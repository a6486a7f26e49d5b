"""Run `edge-train` with tf.distribute.MirroredStrategy over two logical CPU devices.

The multi-GPU path of `trainer.loop` (model, optimizer, checkpoints, batch-norm
recalibration and weight averaging under a strategy that mirrors variables across
replicas) otherwise runs only on a machine with several GPUs. This harness splits the
CPU into two devices, which must happen before TensorFlow starts, hence a process of
its own, and hands fit that strategy in place of its GPU lookup.
Usage: python tests/mirrored_fit.py EDGE-TRAIN-ARGS...
"""

import sys
from pathlib import Path

import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import trainer.loop  # noqa: E402
from trainer.cli import main  # noqa: E402

trainer.loop._strategy = lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
sys.exit(main(sys.argv[1:]))
