rule train:
    input:
        "results/patches.h5",
    output:
        "results/model.h5",
    log:
        "results/logs/train.log",
    retries: 2  # a killed or failed attempt resumes from its checkpoint
    conda:
        "../envs/sae.yaml"
    threads: train_threads()
    # Values that cannot change the model are resources, so changing them re-runs nothing.
    resources:
        tasks=train_tasks,
        mpi="mpiexec",
        memory_mb=config["train"]["memory_mb"] or 0,
        checkpoint_every=config["train"]["checkpoint_every"],
    params:
        **train_params(config["patches"]["count"], config["train"]["iterations"]),
        checkpoint="results/checkpoints/model.h5",
    shell:
        train_shell(
            "--checkpoint {params.checkpoint:q} --checkpoint-every {resources.checkpoint_every:q}"
        )
