"""Pipelines with one fused actor, for tests whose subject is not the actor
pools (jobs, resume, manifests, stores): each actor a pipeline starts is a
Ray worker process (Ray, Ray Data and the stage to import: 2-3 CPU-s here),
and the default plan on the session's two CPUs starts two. Rows are
bit-identical across pool layouts; the default pools and the split pools
(``fuse=False``) keep their own tests (test_pipeline, test_isolation,
test_cluster, the demo's job)."""

ONE_ACTOR = {"fuse": True, "decode_pool": 1}  # patch_dataset, run_preprocess
ONE_ACTOR_ARGS = ["--fuse", "--decode-pool", "1"]  # jobs/preprocess.py, train_stream.py
