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
    # State API clients (list_actors here, Ray Train's placement group cleaner
    # in a worker) ask this head, not the last Ray another test started.
    dashboard = cluster.head_node.address_info["webui_url"]
    if dashboard is None:
        sys.exit("the head's dashboard did not start (Ray's log: 'Failed to start the dashboard')")
    api = {"RAY_API_SERVER_ADDRESS": f"http://{dashboard}"}
    os.environ.update(api)
    ray.init(address=cluster.address, runtime_env={"env_vars": {**ENV, **api}},
             log_to_driver=False)  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False

    from cps_ray import PatchStreamConfig, local_stream, patch_dataset, resolve_backends

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
    # The CPU kernel's rows, decoded in this process (no zygote to start).
    cpu_cfg = PatchStreamConfig(**{**cfg.__dict__, "process_backend": "cpu"})
    local = list(local_stream(paths, cpu_cfg, isolation="none"))
    same = all(
        (a["patches"] == b["patches"]).all() and (a["meta_fields"] == b["meta_fields"]).all()
        for a, b in zip(rows, local)
        if a["error"] is None
    )
    # A trainer worker beside the pipeline, the declared GPU reserved for the
    # trainer: the pools leave it alone, so auto decodes on CPU actors. (A
    # trainer worker cannot hold the GPU itself here: Ray Train's torch
    # backend would move the model to a CUDA device this machine lacks.)
    from cps_ray.pipeline import train_on_workers

    auto = PatchStreamConfig(sequence_length=2, input_size=28, patch_size=14, k_keep=4)
    trained = train_on_workers(
        patch_dataset(paths, auto, reserve_cpus=1, reserve_gpus=1, decode_pool=1), auto,
        {"batch_size": 1, "epochs": 1, "steps": None, "lr": 1e-3, "dim": 8, "depth": 1,
         "heads": 2, "mask_ratio": 0.25, "seed": 0, "prefetch_batches": 1},
        num_workers=1, resources_per_worker={"CPU": 1},
    )  # fmt: skip
    from ray.util.state import list_actors

    actors = {}  # stage -> [(node, asks for a GPU)], every actor of both runs
    for actor in list_actors(detail=True, limit=1000):
        name = actor.class_name or ""
        for stage in ("DecodeStage", "SelectStage", "RayTrainWorker"):
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
                "actors": actors,
                "trained_samples": trained["samples"],
            }
        )
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
