"""A simulated two-node Ray cluster (run by test_cluster.py in its own process,
so the test session keeps its one local Ray).

Head: 2 CPUs, no GPU. Worker: 2 CPUs and 1 declared GPU. There is no CUDA
hardware: CPS_RAY_FAKE_CUDA_DEVICES=visible makes an actor see the GPUs Ray
assigned it, and NUMBA_ENABLE_CUDASIM=1 runs the CUDA kernel in Numba's
simulator. Prints one JSON line with what it saw.
"""

import json
import os
import socket
import sys

import ray
from ray.cluster_utils import Cluster

# 16 threads per block: the simulator starts a Python thread for each (the
# kernels' results do not depend on it, tests/cudasim checks 1 to 256).
ENV = {
    "CPS_RAY_FAKE_CUDA_DEVICES": "visible",
    "NUMBA_ENABLE_CUDASIM": "1",
    "CPS_RAY_CUDA_THREADS_PER_BLOCK": "16",
}


def main(paths: list[str]) -> None:
    # A dashboard port of its own: Ray's default, 8265, may be another Ray's
    # (the head then starts without a dashboard, and the State API is gone).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = {"num_cpus": 2, "num_gpus": 0, "include_dashboard": True, "dashboard_port": port}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    # The State API client (list_actors, at the end) asks this head, not the
    # last Ray another test started.
    dashboard = cluster.head_node.address_info["webui_url"]
    if dashboard is None:
        sys.exit("the head's dashboard did not start (Ray's log: 'Failed to start the dashboard')")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://{dashboard}"
    ray.init(address=cluster.address, runtime_env={"env_vars": ENV}, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    from cps_ray import PatchStreamConfig, patch_dataset, resolve_backends

    @ray.remote
    def resolve(_):
        r = resolve_backends(PatchStreamConfig())
        return ray.get_runtime_context().get_node_id(), r.decode_backend, r.process_backend

    on_gpu = ray.get(resolve.options(num_gpus=1).remote(0))
    on_cpu = ray.get(resolve.options(num_gpus=0, num_cpus=1).remote(0))

    cfg = PatchStreamConfig(sequence_length=2, input_size=28, patch_size=14, k_keep=4,
                            decode_backend="cpu", process_backend="gpu",
                            output_dtype="fp32")  # fmt: skip
    # One decode actor (the default fills the cluster's CPUs, four actors for
    # three videos): what is checked is where the select stage runs.
    rows = patch_dataset(paths, cfg, decode_pool=1).take_all()
    # The same settings on auto with the declared GPU and a CPU held back for
    # other work (Ray Train workers: reserve_gpus=1, reserve_cpus=1): the pools
    # leave the GPU alone, so every actor resolves auto to the CPU. Its rows
    # are the CPU kernel's, to compare the simulated CUDA kernel against.
    auto = PatchStreamConfig(**{**cfg.__dict__, "decode_backend": "auto",
                                "process_backend": "auto"})  # fmt: skip
    reserved = patch_dataset(paths, auto, reserve_cpus=1, reserve_gpus=1, decode_pool=1).take_all()
    same = len(rows) == len(reserved) and all(
        a["path"] == b["path"]
        and (a["patches"] == b["patches"]).all()
        and (a["meta_fields"] == b["meta_fields"]).all()
        for a, b in zip(rows, reserved)
        if a["error"] is None
    )
    from ray.util.state import list_actors

    actors = {}  # stage -> [(node, asks for a GPU)], every actor of both runs
    for actor in list_actors(detail=True, limit=1000):
        name = actor.class_name or ""
        for stage in ("DecodeStage", "SelectStage", "FusedStage"):
            if stage in name:
                wants_gpu = any(
                    key == "GPU" or key.startswith("GPU_group")
                    for key in (actor.required_resources or {})
                )
                actors.setdefault(stage, []).append((actor.node_id, wants_gpu))
    print(
        json.dumps(
            {
                "gpu_node": gpu_node.node_id,
                "auto_on_gpu_actor": on_gpu,
                "auto_on_cpu_actor": on_cpu,
                "rows": [
                    (r["path"], r["decode_backend"], r["process_backend"], r["error"]) for r in rows
                ],
                "same_as_cpu": bool(same),
                "reserved_rows": [
                    (r["path"], r["decode_backend"], r["process_backend"], r["error"])
                    for r in reserved
                ],
                "actors": actors,
            }
        )
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
