"""One process of the two-process training test (run by test_multihost.py, not by pytest)."""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"

import jax  # noqa: E402  (environment must be set first)

jax.config.update("jax_default_matmul_precision", "highest")


def main():
    port, process_id, workdir, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    from zoo.config import load_config
    from zoo.data.store import PackedRows
    from zoo.training import train

    read = []  # the training rows this process reads from a shard store, per call
    original = PackedRows.read

    def recording_read(self, rows):
        if self.split == "train":
            read.append(sorted(int(r) for r in rows))
        return original(self, rows)

    PackedRows.read = recording_read

    assert jax.device_count() == 4 and jax.local_device_count() == 2
    result = train(load_config(None, overrides=overrides), workdir)
    record = {"process": process_id, "losses": result.losses, "step": result.step, "rows": read}
    print("RESULT " + json.dumps(record), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
